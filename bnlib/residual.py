"""A small residual network, with batch norm or one of the ways of training without it.

``ResidualMLP`` is the residual counterpart of ``models.PaperMLP``: a linear stem, ``blocks``
residual blocks of two linear layers each, and a linear classifier. Its ``variant`` chooses what
keeps the residual stream in check:

- ``"bn"``: batch norm after each linear layer, the block ``relu(h + BN(W2 relu(BN(W1 h))))``
  of He et al. (2016); ``"bn_zero_gamma"`` initialises the gamma of each block's last batch
  norm at zero, so every block starts as the identity (Goyal et al., 2017);
- ``"none"``: the same block without normalisation, at PyTorch's default initialisation;
- ``"skipinit"``: ``relu(h + alpha * W2 relu(W1 h))`` with a learnt scalar ``alpha`` per block
  initialised at zero (De and Smith, 2020);
- ``"fixup"``: Fixup (Zhang et al., 2019): the last layer of each branch initialised at zero,
  the first scaled by ``blocks ** -1/2`` (``L ** (-1 / (2m - 2))`` with m = 2 layers per
  branch), scalar biases before each layer and activation, a scalar multiplier per branch;
- ``"nf"``: a normaliser-free block (Brock et al., 2021a, b): ``h + alpha * f(h / beta)``,
  with ``beta`` the standard deviation the stream is expected to have at initialisation,
  ``f`` made of ``WSLinear`` (scaled weight standardisation) and ReLUs scaled to keep unit
  variance; train it with ``adaptive_gradient_clipping``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlib.models import norm_layer

__all__ = [
    "VARIANTS",
    "ResidualMLP",
    "WSLinear",
    "adaptive_gradient_clipping",
    "branch_ratios",
    "power_law_exponent",
]

VARIANTS = ("bn", "bn_zero_gamma", "none", "skipinit", "fixup", "nf")

# the gain that gives relu(z), z ~ N(0, 1), unit variance: Var(relu(z)) = (1 - 1/pi) / 2
RELU_GAIN = math.sqrt(2 / (1 - 1 / math.pi))


class WSLinear(nn.Linear):
    """A linear layer whose weight is standardised at every call (Brock et al., 2021a)::

        W_hat[i] = gain[i] * (W[i] - mean(W[i])) / sqrt(fan_in * var(W[i]) + eps)

    so each output unit of an input of unit variance has variance ``gain[i] ** 2``, whatever
    ``W``'s scale: the layer is scale invariant in ``W``, as a linear layer followed by batch
    norm is, but with no batch statistic. ``gain`` (one per unit) is learnt, initialised at 1.

    Shape: as ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-4) -> None:
        super().__init__(in_features, out_features)
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(out_features))
        nn.init.normal_(self.weight)  # any scale: the standardisation removes it
        nn.init.zeros_(self.bias)

    def standardised_weight(self) -> Tensor:
        """``W_hat``, (out, in): each row standardised by ``layer_norm`` (one fused operation
        and its backward, twice as fast here as the formula written out), with ``eps`` added
        to ``fan_in * var(W[i])``."""
        fan_in = self.in_features
        rows = F.layer_norm(self.weight, (fan_in,), eps=self.eps / fan_in)  # (W[i] - mean) / std
        return rows * (self.gain[:, None] / math.sqrt(fan_in))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.standardised_weight(), self.bias)


class _Block(nn.Module):
    """One residual block of ``ResidualMLP``: ``h -> h'`` of the same width."""

    def __init__(self, width: int, variant: str, index: int, blocks: int, alpha: float, norm):
        super().__init__()
        self.variant = variant
        linear = WSLinear if variant == "nf" else nn.Linear
        self.linear1, self.linear2 = linear(width, width), linear(width, width)
        self.norm1, self.norm2 = norm_layer(norm, width, 1), norm_layer(norm, width, 1)
        if variant == "bn_zero_gamma":
            nn.init.zeros_(self.norm2.weight)
        if variant == "skipinit":
            self.alpha = nn.Parameter(torch.zeros(()))
        if variant == "fixup":
            with torch.no_grad():
                self.linear1.weight.mul_(blocks**-0.5)
                nn.init.zeros_(self.linear2.weight)
            self.linear1.bias = self.linear2.bias = None  # scalar biases instead
            self.biases = nn.Parameter(torch.zeros(4))  # before each layer and activation
            self.multiplier = nn.Parameter(torch.ones(()))
        if variant == "nf":
            self.alpha = alpha
            self.beta = math.sqrt(1 + index * alpha**2)  # the stream's std at initialisation

    def branch(self, h: Tensor) -> Tensor:
        """What the block adds to the stream h, (N, width)."""
        if self.variant == "fixup":
            a = self.biases
            z = F.relu(self.linear1(h + a[0]) + a[1])
            return self.multiplier * self.linear2(z + a[2]) + a[3]
        if self.variant == "nf":
            z = self.linear1(RELU_GAIN * F.relu(h / self.beta))
            return self.alpha * self.linear2(RELU_GAIN * F.relu(z))
        z = self.norm2(self.linear2(F.relu(self.norm1(self.linear1(h)))))
        return self.alpha * z if self.variant == "skipinit" else z

    def forward(self, h: Tensor) -> Tensor:
        if self.variant == "nf":  # the stream is left linear: the branch starts with a ReLU
            return h + self.branch(h)
        return F.relu(h + self.branch(h))


class ResidualMLP(nn.Module):
    """A residual multilayer perceptron for 1 x 28 x 28 images and 10 classes.

    stem: linear 784 -> width (batch norm for "bn" variants), ReLU; ``blocks`` residual blocks
    (see the module's docstring for each ``variant``); linear width -> 10; log-softmax.

    Args:
        variant: one of ``VARIANTS``. Default: "bn".
        norm: the batch norm of the "bn" variants, "bnlib" or "torch" (twins); None for the
            others. Default: "bnlib" for "bn" variants.
        blocks: residual blocks. Default: 4.
        width: units per layer. Default: 100.
        alpha: the "nf" variant's branch scale. Default: 0.2 (Brock et al.'s).

    Shape:
        input (N, 1, 28, 28) or (N, 784); output (N, 10) log-probabilities.
        ``stream(x)`` returns the input of each block and the output of the last, (N, width).
    """

    def __init__(
        self,
        variant: str = "bn",
        blocks: int = 4,
        width: int = 100,
        alpha: float = 0.2,
        norm: str | None = "default",
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        normalised = variant in ("bn", "bn_zero_gamma")
        if norm == "default":
            norm = "bnlib" if normalised else None
        if normalised and norm not in ("bnlib", "torch"):
            raise ValueError(f"variant {variant!r} needs norm 'bnlib' or 'torch', got {norm!r}")
        if not normalised and norm is not None:
            raise ValueError(
                f"variant {variant!r} trains without normalisation: norm must be None, got {norm!r}"
            )
        if blocks < 1:
            raise ValueError(f"blocks must be at least 1, got {blocks}")
        self.variant = variant
        self.stem = (WSLinear if variant == "nf" else nn.Linear)(28 * 28, width)
        self.stem_norm = norm_layer(norm, width, 1)
        self.blocks = nn.ModuleList(
            _Block(width, variant, i + 1, blocks, alpha, norm) for i in range(blocks)
        )
        self.out = nn.Linear(width, 10)
        if variant == "fixup":  # Fixup starts the classifier at zero too
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def stream(self, x: Tensor) -> list[Tensor]:
        """The residual stream: the input of every block, then the last block's output."""
        h = self.stem_norm(self.stem(torch.flatten(x, 1)))  # (N, width)
        if self.variant != "nf":  # nf: each branch starts with its own ReLU
            h = F.relu(h)
        states = [h]
        for block in self.blocks:
            h = block(h)
            states.append(h)
        return states

    def forward(self, x: Tensor) -> Tensor:
        h = self.stream(x)[-1]
        if self.variant == "nf":
            h = F.relu(h)
        return F.log_softmax(self.out(h), dim=1)


def branch_ratios(model: ResidualMLP, x: Tensor) -> list[float]:
    """For each block, the standard deviation of what its branch adds over that of the stream it
    adds to, ``std(branch(h)) / std(h)``, on the batch x (in the model's current mode, no
    gradient): how far each block is from the identity (De and Smith, 2020)."""
    with torch.no_grad():
        states = model.stream(x)
        return [
            (block.branch(h).std() / h.std()).item()
            for block, h in zip(model.blocks, states[:-1], strict=True)
        ]


def power_law_exponent(values: list[float]) -> float:
    """The exponent p of ``values[l - 1] ~ c * l ** p`` (l = 1, 2, ...): the least-squares slope
    of log(value) against log(l). ``branch_ratios`` of batch-normalised blocks give about -1/2.

    Raises:
        ValueError: fewer than two values, or a value that is not positive (no logarithm).
    """
    if len(values) < 2 or min(values) <= 0:
        raise ValueError(f"need at least two positive values, got {values}")
    x = torch.log(torch.arange(1, len(values) + 1, dtype=torch.float64))
    y = torch.log(torch.tensor(values, dtype=torch.float64))
    x, y = x - x.mean(), y - y.mean()
    return ((x * y).sum() / (x * x).sum()).item()


def adaptive_gradient_clipping(
    model: nn.Module, clipping: float, eps: float = 1e-3, skip: tuple[nn.Module, ...] = ()
) -> None:
    """Adaptive gradient clipping (Brock et al., 2021b), in place, before the optimiser's step.

    For each unit (each row of a weight matrix, each entry of a vector), the gradient G_i is
    scaled down where it is large next to the weights it updates::

        G_i <- G_i * min(1, clipping * max(||W_i||, eps) / ||G_i||)

    ``skip`` lists modules left unclipped (the paper leaves out the final classifier).
    """
    if clipping <= 0:
        raise ValueError(f"clipping must be > 0, got {clipping}")
    skipped = {id(p) for m in skip for p in m.parameters()}
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is None or id(p) in skipped:
                continue
            dims = tuple(range(1, p.dim())) if p.dim() > 1 else None  # per row, or per entry
            w_norm = (
                p.abs() if dims is None else torch.linalg.vector_norm(p, dim=dims, keepdim=True)
            )
            g_norm = (
                p.grad.abs()
                if dims is None
                else torch.linalg.vector_norm(p.grad, dim=dims, keepdim=True)
            )
            limit = clipping * w_norm.clamp_min(eps)
            p.grad.mul_(torch.where(g_norm > limit, limit / g_norm.clamp_min(1e-12), 1.0))
