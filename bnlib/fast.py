"""Batch norm made fast: the same computation as ``bnlib.functional``, in fewer passes over memory.

Batch norm does a handful of operations per value, so its time is the time to read and write its
tensors. ``functional.BatchNormFunction`` is written to be read: every line of the formula is one
pass over the data, with a temporary tensor for most of them. ``FastBatchNormFunction`` computes
the same results with the same centring (Chan, Golub and LeVeque, 1983), from the pieces of
``bnlib.core``, and saves passes:

- the input is centred on a first estimate of the mean, taken from a few examples, before the
  node (``core.centre_first``): the subtraction saves nothing for autograd, and the node saves
  its own input, the centred one;
- per-channel sums of squares are squared row norms of the (N, C, L) view (one read, no
  temporary);
- the affine part is folded into one per-channel scale and shift, applied by a single ``addcmul``;
- the backward pass reuses the sums it needs (``dbeta`` gives ``sum(dx_hat)``) and writes ``dx``
  into the tensor of ``dy * centred`` its sums needed, updated in place;
- only the centred input and three (C,) vectors are saved for the backward pass.

``compiled_batch_norm`` takes the other route: the same autograd node around kernels that
``torch.compile`` fuses from the plain formulas of ``core`` (the first call per input shape pays
the compilation). ``textbook_batch_norm`` is the formula one autograd operation at a time.

Each ``(x, gamma, beta, eps) -> (y, mean, var)`` is passed to ``functional.batch_norm(...,
normalise=...)``, which does what every implementation shares (input checks, evaluation mode,
running statistics); ``bnlib.modules.IMPLEMENTATIONS`` names them.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

from bnlib import core
from bnlib.core import channel_dot, channel_sum, per_channel, reduce_dims, values_per_channel

__all__ = [
    "channel_sum",
    "channel_dot",
    "FastBatchNormFunction",
    "fast_batch_norm",
    "compiled_kernel",
    "CompiledBatchNormFunction",
    "compiled_batch_norm",
    "textbook_batch_norm",
]


class FastBatchNormFunction(core.StatisticsFunction):
    """Training-mode batch norm, forward and closed-form backward in few passes over memory.

    ``(centred, gamma, beta, eps) -> (y, residual, var)``: ``centred`` is the input shifted by any
    per-channel constant (batch norm ignores it; close to the mean, it keeps float32's digits),
    ``residual`` its per-channel mean and ``var`` the biased variance, both (C,) and not
    differentiable. ``fast_batch_norm`` does the centring and returns the mean. What the
    backward needs, ``(centred, residual, inv_std, gamma)``, is saved by ``setup_context``,
    shared with the other Functions (``core.StatisticsFunction``).
    """

    @staticmethod
    def forward(centred: Tensor, gamma: Tensor, beta: Tensor, eps: float):
        residual, var = core.centred_moments(centred)  # passes 2, 3: read centred twice
        inv_std = torch.rsqrt(var + eps)
        y = core.apply_affine(centred, residual, inv_std, gamma, beta)  # pass 4: read, write
        return y, residual, var

    @staticmethod
    @core.without_autocast
    def backward(ctx, dy: Tensor, _dresidual: Tensor, _dvar: Tensor):
        centred, residual, inv_std, gamma = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a backward that autograd can follow
            return (*core.backward_with_graph(dy, centred, gamma, ctx.eps), None)
        dbeta, dgamma, product = core.backward_sums(dy, centred, residual, inv_std)
        count = values_per_channel(dy)
        dx = core.backward_apply(
            dy, centred, residual, inv_std, gamma, dbeta, dgamma, count, out=product
        )
        return dx, dgamma, dbeta, None


# The default implementation of the modules: ``(x, gamma, beta, eps) -> (y, mean, var)``
fast_batch_norm = core.centre_first(FastBatchNormFunction)


# ----------------------------------------------------------------------------------------------
# Compiled kernels in the same autograd node


@functools.cache
def compiled_kernel(kernel):
    """``torch.compile(kernel)``, created on first use (compiling is per input shape)."""
    # Compiling for a CPU without CUDA logs a warning about CUDA_HOME that does not apply.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(kernel, dynamic=False)


def _eager_here() -> bool:
    """Whether torch.func transforms (vmap, grad, jvp) are active: the plain kernels run then,
    uncompiled, since the compiler would trace the transforms' wrappers."""
    return torch._C._are_functorch_transforms_active()


class CompiledBatchNormFunction(core.StatisticsFunction):
    """``(x, gamma, beta, eps) -> (y, mean, var)`` with ``torch.compile``d kernels: the plain
    forward of ``core.normalise_plain`` and backward of ``core.backward_plain``, each fused into
    a reduction and a loop. Saves x and two (C,) vectors, as PyTorch's kernel. A backward that
    is itself differentiated, or one under ``torch.func``, runs the same formulas uncompiled."""

    @staticmethod
    def forward(x: Tensor, gamma: Tensor, beta: Tensor, eps: float):
        kernel = core.normalise_plain if _eager_here() else compiled_kernel(core.normalise_plain)
        return kernel(x, gamma, beta, eps)

    @staticmethod
    @core.without_autocast
    def backward(ctx, dy: Tensor, _dmean: Tensor, _dvar: Tensor):
        x, mean, inv_std, gamma = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a backward that autograd can follow
            return (*core.backward_with_graph(dy, x, gamma, ctx.eps), None)
        kernel = core.backward_plain if _eager_here() else compiled_kernel(core.backward_plain)
        return (*kernel(dy, x, mean, inv_std, gamma), None)


def compiled_batch_norm(x: Tensor, gamma: Tensor, beta: Tensor, eps: float):
    """``CompiledBatchNormFunction`` as the modules call it: ``(y, mean, var)``, y in x's dtype,
    float16 and bfloat16 computed in float32."""
    x_acc = x.to(core.accumulation_dtype(x.dtype))
    y, mean, var = core.apply(CompiledBatchNormFunction, _CompiledEager, x_acc, gamma, beta, eps)
    return y.to(x.dtype), mean, var


_CompiledEager = core.without_argument_binding(CompiledBatchNormFunction)


# ----------------------------------------------------------------------------------------------
# The formula as autograd sees it


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
