"""Several seeds of the paper's MLP trained at once, as one network with a seed dimension.

A small network on a CPU spends most of its time in per-operation overhead, not in arithmetic:
S copies of it cost far less as one network whose layers carry S independent sets of weights
than as S runs. ``StackedMLP`` is such a network, built from S ``PaperMLP``s (one per seed):

- a linear layer holds weights (S, out, in) and applies each seed's own with one batched matmul;
- batch norm normalises (N, S * D) channels: each seed's D features keep their own statistics,
  over their own mini-batch, exactly as S separate layers would;
- layer and group norm normalise each example's features within its own seed.

Each seed sees its own mini-batches and its loss is its own mean; the summed loss gives each
seed's weights its own gradient, and SGD (with or without momentum) acts on every entry
separately, so the S seeds train as S separate runs would, to float rounding
(``tests/test_stacked.py`` checks it against ``PaperMLP``). ``unstack(s)`` gives back seed
``s``'s ``PaperMLP`` state dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlib.models import DistributionShift, PaperMLP
from bnlib.modules import is_batch_norm

__all__ = [
    "StackedLinear",
    "StackedBatchNorm",
    "StackedGroupNorm",
    "StackedShift",
    "StackedMLP",
]


class StackedLinear(nn.Module):
    """S linear layers: weight (S, out, in), bias (S, out).

    Shape:
        input (S, N, in), or (N, in) shared by every seed; output (S, N, out).
    """

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        # Stored as (S, in, out) and seen as (S, out, in): the forward's operand is then
        # contiguous, and so is the gradient the batched matmul returns for it, which autograd
        # can keep as it is (with the (S, out, in) layout it copied every gradient, a quarter of
        # a training step).
        weights = torch.stack([m.weight.detach().t() for m in linears]).contiguous()
        self.weight = nn.Parameter(weights.transpose(1, 2))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in linears]).clone())

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:  # one input for every seed
            x = x.expand(self.weight.shape[0], *x.shape)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))

    def unstack(self, s: int) -> dict[str, Tensor]:
        weight = self.weight[s].detach().clone(memory_format=torch.contiguous_format)
        return {"weight": weight, "bias": self.bias[s].detach().clone()}


class StackedBatchNorm(nn.Module):
    """S batch norms over D features, as one batch norm of the same class over S * D channels.

    Shape:
        input (S, N, D); output (S, N, D). Inside, (N, S * D): seed s owns channels
        s * D to (s + 1) * D, so its statistics are computed over its own N examples.
    """

    def __init__(self, norms: Sequence[nn.Module]) -> None:
        super().__init__()
        first = norms[0]
        self.num_seeds, self.num_features = len(norms), first.num_features
        ghost = getattr(first, "virtual_batch_size", None)  # a ghost batch norm: the same split
        extra = {} if ghost is None else {"virtual_batch_size": ghost}
        self.norm = type(first)(
            self.num_seeds * self.num_features, first.eps, first.momentum, **extra
        )
        if hasattr(first, "implementation"):  # bnlib's: train through the same Function
            self.norm.implementation = first.implementation
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(self.norm, name).copy_(torch.cat([getattr(m, name) for m in norms]))
            self.norm.num_batches_tracked.copy_(first.num_batches_tracked)

    def forward(self, x: Tensor) -> Tensor:
        S, N, D = x.shape
        y = self.norm(x.transpose(0, 1).reshape(N, S * D))  # (N, S * D)
        return y.view(N, S, D).transpose(0, 1)  # (S, N, D)

    def unstack(self, s: int) -> dict[str, Tensor]:
        part = slice(s * self.num_features, (s + 1) * self.num_features)
        state = {
            name: getattr(self.norm, name)[part].detach().clone()
            for name in ("weight", "bias", "running_mean", "running_var")
        }
        return state | {"num_batches_tracked": self.norm.num_batches_tracked.clone()}


class StackedGroupNorm(nn.Module):
    """S layer norms (``nn.LayerNorm(D)``) or group norms (``nn.GroupNorm(G, D)``): each example's
    features, within each seed, normalised in G groups, then each seed's own affine."""

    def __init__(self, norms: Sequence[nn.Module]) -> None:
        super().__init__()
        first = norms[0]
        self.num_groups = first.num_groups if isinstance(first, nn.GroupNorm) else 1
        self.eps = first.eps
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in norms]).clone())
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in norms]).clone())

    def forward(self, x: Tensor) -> Tensor:
        S, N, D = x.shape
        groups = x.reshape(S, N, self.num_groups, D // self.num_groups)
        z = F.layer_norm(groups, groups.shape[-1:], eps=self.eps).reshape(S, N, D)
        return torch.addcmul(self.bias.unsqueeze(1), z, self.weight.unsqueeze(1))

    def unstack(self, s: int) -> dict[str, Tensor]:
        return {"weight": self.weight[s].detach().clone(), "bias": self.bias[s].detach().clone()}


class StackedShift(DistributionShift):
    """``DistributionShift`` for S seeds, on (S, N, D) inputs: each seed draws its own mean and
    standard deviation per feature, afresh at every forward pass in training, and, with
    ``per_example``, its own noise for every example (``DistributionShift`` draws one
    distribution per leading index, so the S seeds are S separate shifts)."""


def _stack_norm(norms: Sequence[nn.Module]) -> nn.Module:
    if isinstance(norms[0], nn.Identity):
        return nn.Identity()
    if is_batch_norm(norms[0]):
        return StackedBatchNorm(norms)
    if isinstance(norms[0], nn.LayerNorm | nn.GroupNorm):
        return StackedGroupNorm(norms)
    raise TypeError(f"no stacked version of {type(norms[0]).__name__}")


class StackedMLP(nn.Module):
    """S ``PaperMLP``s of the same architecture (one per seed) trained as one network.

    Shape:
        input (S, N, 1, 28, 28) or (S, N, 784), each seed its own examples, or (N, 1, 28, 28)
        shared by every seed; output (S, N, 10) log-probabilities.
    """

    def __init__(self, models: Sequence[PaperMLP]) -> None:
        super().__init__()
        first = models[0]
        if any(type(m) is not PaperMLP for m in models):
            raise TypeError("StackedMLP stacks PaperMLP models only")
        self.num_seeds = len(models)
        self.activation = first.activation
        self.norm_after_activation = first.norm_after_activation
        depth = len(first.linears)
        self.linears = nn.ModuleList(
            StackedLinear([m.linears[i] for m in models]) for i in range(depth)
        )
        self.norms = nn.ModuleList(_stack_norm([m.norms[i] for m in models]) for i in range(depth))
        self.shifts = nn.ModuleList(
            StackedShift(s.max_shift, s.max_scale, s.per_example)
            if isinstance(s, DistributionShift)
            else s
            for s in first.shifts
        )
        self.dropout = nn.Dropout(first.dropout.p)
        self.out = StackedLinear([m.out for m in models])

    @staticmethod
    def _flatten(x: Tensor) -> Tensor:
        return x.flatten(-3) if x.dim() in (4, 5) else x  # (S, N, 784) or (N, 784)

    # The same pass as PaperMLP's: every layer here takes and returns (S, N, ...) tensors.
    _layers = PaperMLP._layers
    pre_activations = PaperMLP.pre_activations

    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(self.out(self._layers(x)[1]), dim=-1)  # (S, N, 10)

    def unstack(self, s: int) -> dict[str, Tensor]:
        """Seed ``s``'s weights and buffers, as a ``PaperMLP`` state dict."""
        state = {}
        for name, module in self.named_modules():
            if hasattr(module, "unstack") and module is not self:
                for key, value in module.unstack(s).items():
                    state[f"{name}.{key}"] = value
        return state
