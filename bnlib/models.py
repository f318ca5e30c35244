"""The networks the book trains: the article's CNN and the MLP of Ioffe and Szegedy's Figure 1.

Each takes ``norm``: ``None`` (no batch norm), ``"torch"`` (``torch.nn.BatchNorm*d``) or
``"bnlib"`` (ours), so the same network can be trained with either implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlib import modules

__all__ = ["ArticleCNN", "PaperMLP", "NORMS"]

NORMS = (None, "torch", "bnlib")

_LAYERS = {
    "torch": {1: nn.BatchNorm1d, 2: nn.BatchNorm2d},
    "bnlib": {1: modules.BatchNorm1d, 2: modules.BatchNorm2d},
}


def norm_layer(norm: str | None, num_features: int, dims: int) -> nn.Module:
    """A batch norm over ``num_features`` channels of a ``dims``-D layer, or an identity."""
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


class PaperMLP(nn.Module):
    """The MNIST network of Ioffe and Szegedy (2015, section 4.1): three hidden layers of 100
    sigmoid units, batch norm (when asked) on each hidden layer's input to the sigmoid.

    Args:
        norm: None, "torch" or "bnlib".
        hidden: units per hidden layer. Default: 100.
        depth: number of hidden layers. Default: 3.

    Shape:
        input (N, 1, 28, 28) or (N, 784); output (N, 10) log-probabilities.
        ``pre_activations(x)`` returns the inputs of each hidden layer's sigmoids, (N, hidden).
    """

    def __init__(self, norm: str | None = None, hidden: int = 100, depth: int = 3) -> None:
        super().__init__()
        self.norm = norm
        sizes = [28 * 28] + [hidden] * depth
        self.linears = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.norms = nn.ModuleList(norm_layer(norm, hidden, 1) for _ in range(depth))
        self.out = nn.Linear(hidden, 10)

    def pre_activations(self, x: Tensor) -> list[Tensor]:
        """The input of every hidden sigmoid, layer by layer (after batch norm if there is one)."""
        x = torch.flatten(x, 1)  # (N, 784)
        inputs = []
        for linear, norm in zip(self.linears, self.norms, strict=True):
            z = norm(linear(x))  # (N, hidden)
            inputs.append(z)
            x = torch.sigmoid(z)
        return inputs

    def forward(self, x: Tensor) -> Tensor:
        h = torch.sigmoid(self.pre_activations(x)[-1])
        return F.log_softmax(self.out(h), dim=1)
