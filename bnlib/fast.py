"""Batch norm made fast: the same computation as ``bnlib.functional``, in fewer passes over memory.

Batch norm does a handful of operations per value, so its time is the time to read and write its
tensors. ``functional.BatchNormFunction`` is written to be read: every line of the formula is one
pass over the data, with a temporary tensor for most of them. ``FastBatchNormFunction`` computes
the same results with the same centring (Chan, Golub and LeVeque, 1983), and saves fewer passes:

- the affine part is folded into one per-channel scale and shift, applied by a single ``addcmul``;
- per-channel sums of products come from ``vecdot`` over the rows of the (N, C, L) view, which
  reads both tensors once and writes no temporary;
- the backward pass reuses the sums it needs (``dbeta`` gives ``sum(dx_hat)``) and writes ``dx``
  in two fused passes;
- only the centred input and three (C,) vectors are saved for the backward pass.

``compiled_textbook()`` takes the other route: ``torch.compile`` of the textbook formula, which
fuses its operations into a few loops (the first call per input shape pays the compilation).

Either one is passed to ``functional.batch_norm(..., normalise=...)``, which does what every
implementation shares (input checks, evaluation mode, running statistics).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
from torch import Tensor

from bnlib.functional import per_channel, reduce_dims, values_per_channel

__all__ = [
    "channel_sum",
    "channel_dot",
    "FastBatchNormFunction",
    "textbook_batch_norm",
    "compiled_textbook",
]


def channel_sum(x: Tensor) -> Tensor:
    """Per-channel sum of x (N, C, *), shape (C,)."""
    return x.sum(reduce_dims(x))


def channel_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-channel sum of ``a * b`` for a, b of shape (N, C, *), without the temporary ``a * b``.

    Each (n, c) row of the (N, C, L) view is contiguous: ``vecdot`` reduces it in one read of
    each tensor, with pairwise-accurate float sums; the (N, C) partial sums are then added.
    """
    n, c = a.shape[:2]
    return torch.linalg.vecdot(a.reshape(n, c, -1), b.reshape(n, c, -1)).sum(0)  # (N, C) -> (C,)


class FastBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm, forward and closed-form backward in few passes over memory.

    Same inputs and outputs as ``functional.BatchNormFunction``: ``(x, gamma, beta, eps)`` to
    ``(y, mean, var)``, with mean and the biased var of shape (C,) not differentiable.
    """

    @staticmethod
    def forward(ctx, x: Tensor, gamma: Tensor, beta: Tensor, eps: float):
        m = values_per_channel(x)
        shift = channel_sum(x) / m  # (C,) first estimate of the mean          pass 1: read x
        centred = x - per_channel(shift, x)  # (N, C, *)                   pass 2: read x, write
        residual = channel_sum(centred) / m  # (C,) what the estimate missed     pass 3: read
        var = (channel_dot(centred, centred) / m - residual * residual).clamp_min(0)  # pass 4
        inv_std = torch.rsqrt(var + eps)
        # y = gamma * (centred - residual) * inv_std + beta = scale * centred + offset
        scale = gamma * inv_std
        offset = beta - residual * scale
        y = torch.addcmul(per_channel(offset, x), centred, per_channel(scale, x))  # pass 5
        ctx.save_for_backward(centred, residual, inv_std, gamma)
        ctx.mark_non_differentiable(shift, var)
        return y, shift + residual, var

    @staticmethod
    def backward(ctx, dy: Tensor, _dmean: Tensor, _dvar: Tensor):
        centred, residual, inv_std, gamma = ctx.saved_tensors
        m = values_per_channel(dy)
        dbeta = channel_sum(dy)  # pass 1: read dy
        # dgamma = sum(dy * x_hat) with x_hat = (centred - residual) * inv_std
        dgamma = (channel_dot(dy, centred) - residual * dbeta) * inv_std  # pass 2: read dy, centred
        # dx = gamma * inv_std / m * (m * dy - dbeta - x_hat * dgamma) = a * dy + b * centred + c
        a = gamma * inv_std
        b = -a * inv_std * dgamma / m
        c = -a * dbeta / m - b * residual
        dx = torch.addcmul(per_channel(c, dy), centred, per_channel(b, dy))  # pass 3: read, write
        dx.addcmul_(dy, per_channel(a, dy))  # pass 4: read dx and dy, write dx
        return dx, dgamma, dbeta, None


def textbook_batch_norm(
    x: Tensor, gamma: Tensor, beta: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The formula as written in the paper, one autograd operation per step: ``(y, mean, var)``.

    Autograd records every intermediate it needs for the backward pass.
    """
    dims = reduce_dims(x)
    mean = x.mean(dims, keepdim=True)  # (1, C, 1, ...)
    centred = x - mean
    var = (centred * centred).mean(dims, keepdim=True)
    x_hat = centred / torch.sqrt(var + eps)
    y = x_hat * per_channel(gamma, x) + per_channel(beta, x)
    return y, mean.flatten().detach(), var.flatten().detach()


@functools.cache
def compiled_textbook() -> Callable[..., tuple[Tensor, Tensor, Tensor]]:
    """``torch.compile(textbook_batch_norm)``, created on first use (compiling is per shape)."""
    # Compiling for a CPU without CUDA logs a warning about CUDA_HOME that does not apply.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(textbook_batch_norm, dynamic=False)
