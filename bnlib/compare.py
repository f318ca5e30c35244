"""bnlib next to PyTorch: run both on the same inputs and report how far apart they are."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["compare_layers"]


def _max_diff(a: Tensor | None, b: Tensor | None) -> float:
    if a is None and b is None:
        return 0.0
    return (a.detach().double() - b.detach().double()).abs().max().item()


def compare_layers(
    ours: nn.Module, theirs: nn.Module, train_batches: Sequence[Tensor], eval_batch: Tensor
) -> dict[str, float]:
    """Largest absolute differences between two batch norm layers that start from one state.

    Each training batch goes through both layers in train mode, then ``eval_batch`` in eval mode;
    every pass is followed by a backward pass of the same random output gradient.

    Returns:
        The largest difference, over all passes, of each quantity: ``output``, ``grad_input``,
        ``grad_weight``, ``grad_bias``, and after the last pass ``running_mean``,
        ``running_var``, ``num_batches_tracked``.
    """
    ours.load_state_dict(theirs.state_dict())
    diffs = dict.fromkeys(("output", "grad_input", "grad_weight", "grad_bias"), 0.0)
    passes = [(x, True) for x in train_batches] + [(eval_batch, False)]
    for x, training in passes:
        ours.train(training), theirs.train(training)
        outputs, grads = [], []
        dy = None
        for layer in (ours, theirs):
            layer.zero_grad()
            x_in = x.detach().clone().requires_grad_()
            y = layer(x_in)
            dy = torch.randn_like(y) if dy is None else dy
            y.backward(dy)
            outputs.append(y)
            grads.append(
                (x_in.grad, getattr(layer.weight, "grad", None), getattr(layer.bias, "grad", None))
            )
        diffs["output"] = max(diffs["output"], _max_diff(*outputs))
        for key, a, b in zip(("grad_input", "grad_weight", "grad_bias"), *grads, strict=True):
            diffs[key] = max(diffs[key], _max_diff(a, b))
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        diffs[key] = _max_diff(getattr(ours, key), getattr(theirs, key))
    return diffs
