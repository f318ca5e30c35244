"""The networks the book trains: the article's CNN and the MLP of Ioffe and Szegedy's Figure 1.

Each takes ``norm``: ``None`` (no normalisation), ``"torch"`` (``torch.nn.BatchNorm*d``),
``"bnlib"`` (ours), so the same network can be trained with either batch norm, or the
alternatives that do not depend on the batch: ``"layer"`` (layer norm, Ba et al., 2016) and
``"group"`` (group norm with up to 8 groups, Wu and He, 2018).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlib import modules

__all__ = ["ArticleCNN", "PaperMLP", "DistributionShift", "scale_init", "NORMS"]

NORMS = (None, "torch", "bnlib", "layer", "group")

_LAYERS = {
    "torch": {1: nn.BatchNorm1d, 2: nn.BatchNorm2d},
    "bnlib": {1: modules.BatchNorm1d, 2: modules.BatchNorm2d},
    # statistics over each example's own features: the same in training and inference
    "layer": {1: nn.LayerNorm, 2: lambda c: nn.GroupNorm(1, c)},  # one group: all of C, H, W
    # up to 8 groups, as many as divide the channels evenly (100 features: 4 groups of 25)
    "group": {
        1: lambda c: nn.GroupNorm(math.gcd(8, c), c),
        2: lambda c: nn.GroupNorm(math.gcd(8, c), c),
    },
}


def norm_layer(norm: str | None, num_features: int, dims: int) -> nn.Module:
    """A normalisation over ``num_features`` channels of a ``dims``-D layer, or an identity."""
    if norm is None:
        return nn.Identity()
    if norm not in _LAYERS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return _LAYERS[norm][dims](num_features)


class ArticleCNN(nn.Module):
    """The article's network, for 1 x 28 x 28 images and 10 classes.

    conv 1->32 3x3, BN, ReLU; conv 32->64 3x3, BN, ReLU; max-pool 2; dropout 0.25;
    flatten (64 * 12 * 12 = 9216); linear 128, BN, ReLU; linear 10; log-softmax.

    Args:
        norm: None, "torch" or "bnlib".
        dropout: the dropout probability after pooling. Default: 0.25 (the article's).

    Shape:
        input (N, 1, 28, 28); output (N, 10) log-probabilities.
    """

    def __init__(self, norm: str | None = "torch", dropout: float = 0.25) -> None:
        super().__init__()
        self.norm = norm
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1)
        self.bn1 = norm_layer(norm, 32, 2)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.bn2 = norm_layer(norm, 64, 2)
        self.dropout1 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(9216, 128)
        self.fc1_bn = norm_layer(norm, 128, 1)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (N, 32, 26, 26)
        x = F.relu(self.bn2(self.conv2(x)))  # (N, 64, 24, 24)
        x = F.max_pool2d(x, 2)  # (N, 64, 12, 12)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)  # (N, 9216)
        x = F.relu(self.fc1_bn(self.fc1(x)))  # (N, 128)
        x = self.fc2(x)  # (N, 10)
        return F.log_softmax(x, dim=1)


class DistributionShift(nn.Module):
    """Noise that moves a layer's distribution at every training step (Santurkar et al., 2018).

    At every forward pass in training, each feature ``j`` draws this step's distribution: a
    mean ``mu_j`` uniform in [-max_shift, max_shift] and a standard deviation ``sigma_j`` uniform
    in [1, max_scale]. Then:

    - ``per_example=True`` (the paper's intervention): every value of every example gets its own
      independent Gaussian noise of mean ``mu_j`` and variance ``sigma_j^2 - 1`` added,
      ``y = x + mu_j + sqrt(sigma_j^2 - 1) * n`` with ``n ~ N(0, 1)`` i.i.d. The paper states the
      properties (i.i.d. for each activation of each example, non-zero mean, non-unit variance,
      a distribution that changes at every step); the uniform and Gaussian laws are our choice.
    - ``per_example=False`` (a variant of ours): one affine map per feature, shared by the whole
      mini-batch, ``y = sigma_j * x + mu_j``.

    Either way a feature of mean 0 and variance 1 (the output of batch norm with ``gamma = 1,
    beta = 0``) comes out with mean ``mu_j`` and variance ``sigma_j^2`` at that step: the next
    layer sees its input distribution change at every step, exactly the "internal covariate
    shift" batch norm was meant to remove. In evaluation it does nothing.

    Args:
        max_shift: the largest mean of the noise. Default: 1.
        max_scale: the largest standard deviation a unit-variance feature comes out with
            (at least 1). Default: 2.
        per_example: independent noise for every example (the paper's) instead of one affine
            map shared by the mini-batch. Default: False.

    Shape:
        input (..., N, D), features last; output the same shape.
    """

    def __init__(
        self, max_shift: float = 1.0, max_scale: float = 2.0, per_example: bool = False
    ) -> None:
        super().__init__()
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        if max_scale < 1:
            raise ValueError(f"max_scale must be >= 1 (a standard deviation), got {max_scale}")
        self.max_shift = max_shift
        self.max_scale = max_scale
        self.per_example = per_example

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        if x.dim() < 2:
            raise ValueError(f"expected (..., N, D) input, got shape {tuple(x.shape)}")
        # this step's distribution: one (mu, sigma) per feature (and per leading index: a seed)
        draw = (*x.shape[:-2], 1, x.shape[-1])  # (..., 1, D)
        rand = torch.rand(2, *draw, device=x.device, dtype=x.dtype)
        sigma = 1 + (self.max_scale - 1) * rand[0]
        mu = self.max_shift * (2 * rand[1] - 1)
        if self.per_example:  # i.i.d. noise for every value of every example: (..., N, D)
            return x + mu + (sigma**2 - 1).sqrt() * torch.randn_like(x)
        return x * sigma + mu

    def extra_repr(self) -> str:
        return (
            f"max_shift={self.max_shift}, max_scale={self.max_scale}, "
            f"per_example={self.per_example}"
        )


ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": F.relu}


class PaperMLP(nn.Module):
    """The MNIST network of Ioffe and Szegedy (2015, section 4.1): three hidden layers of 100
    sigmoid units, batch norm (when asked) on each hidden layer's input to the nonlinearity.

    The defaults are the paper's network; the other arguments are the knobs the book's
    experiments turn.

    Args:
        norm: None, "torch" or "bnlib".
        hidden: units per hidden layer. Default: 100.
        depth: number of hidden layers. Default: 3.
        activation: "sigmoid" or "relu". Default: "sigmoid".
        dropout: dropout probability after each hidden nonlinearity. Default: 0.
        shift: a ``DistributionShift`` inserted after each normalisation, or None. Default: None.
        norm_after_activation: normalise the output of the nonlinearity instead of its input
            (the paper's choice, and the default, is before). Default: False.

    Shape:
        input (N, 1, 28, 28) or (N, 784); output (N, 10) log-probabilities.
        ``pre_activations(x)`` returns the inputs of each hidden layer's nonlinearity, (N, hidden).
    """

    def __init__(
        self,
        norm: str | None = None,
        hidden: int = 100,
        depth: int = 3,
        activation: str = "sigmoid",
        dropout: float = 0.0,
        shift: DistributionShift | None = None,
        norm_after_activation: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.norm = norm
        self.activation = activation
        self.norm_after_activation = norm_after_activation
        sizes = [28 * 28] + [hidden] * depth
        self.linears = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.norms = nn.ModuleList(norm_layer(norm, hidden, 1) for _ in range(depth))
        self.shifts = nn.ModuleList(shift or nn.Identity() for _ in range(depth))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 10)

    def _layers(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """One pass through the hidden layers: the input of each nonlinearity, and the output."""
        act = ACTIVATIONS[self.activation]
        x = self._flatten(x)  # (N, 784)
        inputs = []
        for linear, norm, shift in zip(self.linears, self.norms, self.shifts, strict=True):
            if self.norm_after_activation:
                z = linear(x)  # (N, hidden)
                x = self.dropout(shift(norm(act(z))))
            else:
                z = shift(norm(linear(x)))  # (N, hidden)
                x = self.dropout(act(z))
            inputs.append(z)
        return inputs, x

    @staticmethod
    def _flatten(x: Tensor) -> Tensor:
        return torch.flatten(x, 1)

    def pre_activations(self, x: Tensor) -> list[Tensor]:
        """The input of every hidden nonlinearity, layer by layer, (N, hidden) each."""
        return self._layers(x)[0]

    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(self.out(self._layers(x)[1]), dim=1)


def scale_init(model: nn.Module, gain: float) -> nn.Module:
    """Re-draw every linear and convolution weight from N(0, gain^2 / fan_in), biases at zero.

    ``gain=1`` is LeCun's scale, which keeps the variance of a layer's output near that of its
    input; smaller gains shrink the signal layer after layer, larger ones blow it up.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, gain / fan_in**0.5)
                if module.bias is not None:
                    module.bias.zero_()
    return model
