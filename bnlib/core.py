"""The pieces every batch norm of bnlib is built from, written once.

Per channel ``c`` (dimension 1), over the ``m`` values of every other dimension::

    statistics   shift = first estimate of the mean;   centred = x - shift
                 residual = mean(centred);  var = mean(centred ** 2) - residual ** 2
    apply        x_hat = (centred - residual) * inv_std,  inv_std = 1 / sqrt(var + eps)
                 y = gamma * x_hat + beta
    backward     channel sums   sum_dy = sum(dy),  sum_dy_x_hat = sum(dy * x_hat)
                 apply          dx = gamma * inv_std * (dy - sum_dy / m - x_hat * sum_dy_x_hat / m)
    running      running = (1 - momentum) * running + momentum * batch,  var unbiased: m / (m - 1)

``functional.BatchNormFunction`` (readable), ``fast.FastBatchNormFunction`` (few passes) and
``distributed.SyncBatchNorm`` (collectives between the channel sums and the apply) use these.

Batch norm is invariant to a per-channel constant shift of its input: BN(x - s) = BN(x) for any
constant s. So the first pass may centre the input *outside* the autograd node with a constant
(detached) shift: ``x - shift`` saves nothing for autograd, the node saves ``centred`` (its own
input), and when a graph of the backward is asked for (``create_graph=True``), that saved input
still leads back to x: the backward is then written in differentiable operations
(``backward_with_graph``), and second derivatives are exact.

Low precision (float16, bfloat16) is accumulated in float32, as PyTorch's kernels do: a float16 sum
overflows past 65,504 and a bfloat16 one keeps 3 significant digits.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import Tensor

__all__ = [
    "reduce_dims",
    "per_channel",
    "values_per_channel",
    "accumulation_dtype",
    "channel_sum",
    "channel_dot",
    "channel_sum_of_squares",
    "first_estimate",
    "centred_moments",
    "apply_affine",
    "normalise_plain",
    "without_argument_binding",
    "apply",
    "centre_first",
    "backward_sums",
    "backward_apply",
    "backward_plain",
    "backward_with_graph",
    "forward_tangent",
    "StatisticsFunction",
    "update_running_stats",
    "autocast_disabled",
    "without_autocast",
    "output_layout",
]

# ----------------------------------------------------------------------------------------------
# Shapes


def reduce_dims(x: Tensor) -> list[int]:
    """The dimensions a batch norm averages over: all but the channel dimension 1."""
    return [0, *range(2, x.dim())]


def per_channel(v: Tensor, x: Tensor) -> Tensor:
    """View a (C,) vector so it broadcasts against x of shape (N, C, *): (1, C, 1, ..., 1)."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def values_per_channel(x: Tensor) -> int:
    """How many values each channel's statistics are computed from: N * (product of spatial)."""
    count = x.shape[0]
    for size in x.shape[2:]:
        count *= size
    return count


# ----------------------------------------------------------------------------------------------
# Statistics

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums are accumulated in: float32 for float16 and bfloat16, else ``dtype``."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def channel_sum(x: Tensor) -> Tensor:
    """Per-channel sum of x (N, C, *), shape (C,), accumulated and returned in float32 for
    float16/bfloat16 inputs."""
    if x.dtype in _LOW_PRECISION:
        return x.sum(reduce_dims(x), dtype=torch.float32)
    return x.sum(reduce_dims(x))


def channel_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-channel sum of ``a * b`` for a, b of shape (N, C, *).

    ``vecdot`` over the (n, c) rows of the (N, C, L) view, with pairwise-accurate float sums;
    the (N, C) partial sums are then added. A (N, C) input (after a linear layer) is reduced
    column by column, in one call.
    """
    if a.dtype != b.dtype or a.dtype in _LOW_PRECISION:  # accumulate in float32 or wider
        dtype = torch.promote_types(accumulation_dtype(a.dtype), accumulation_dtype(b.dtype))
        a, b = a.to(dtype), b.to(dtype)
    if a.dim() == 2:  # (N, C): reduce each column; the (N, C, 1) rows would cost twice as much
        return torch.linalg.vecdot(a.T, b.T)  # (C,)
    n, c = a.shape[:2]
    return torch.linalg.vecdot(a.reshape(n, c, -1), b.reshape(n, c, -1)).sum(0)  # (N, C) -> (C,)


def channel_sum_of_squares(x: Tensor) -> Tensor:
    """Per-channel sum of ``x * x``, shape (C,): the squared norm of each (n, c) row, one read
    of x and no temporary (``vector_norm`` is a plain reduction; a dot product of two tensors
    reads twice as much). A (N, C) input is reduced column by column instead: its rows have
    one value each (on (60, 1000), 25 microseconds against 35 for N * C norms of one value)."""
    if x.dim() == 2:
        return channel_dot(x, x)
    n, c = x.shape[:2]
    rows = x.reshape(n, c, -1)
    if x.dtype in _LOW_PRECISION:
        rows = rows.float()
    return torch.linalg.vector_norm(rows, dim=-1).square().sum(0)  # (N, C) -> (C,)


def first_estimate(x: Tensor) -> Tensor:
    """A first estimate of the per-channel mean (C,), as a constant (no gradient, no tangent):
    the shift that centres the input before the exact statistics are computed.

    Any value close to the mean will do, since the residual corrects it exactly: the mean of at
    most 8 of the N examples (every ``N // 8``-th) reads a fraction of the batch.
    """
    sample = x.detach()[:: max(1, x.shape[0] // 8)]
    return channel_sum(sample) / values_per_channel(sample)


def centred_moments(centred: Tensor) -> tuple[Tensor, Tensor]:
    """``(residual, var)`` of a centred input (N, C, *): its per-channel mean (what the shift
    missed, ~0) and biased variance, corrected by that residual (Chan, Golub and LeVeque, 1983).
    Both (C,). Two reads of ``centred``; exact when the shift is close to the mean."""
    m = values_per_channel(centred)
    residual = channel_sum(centred) / m
    var = (channel_sum_of_squares(centred) / m - residual * residual).clamp_min(0)
    return residual, var


# ----------------------------------------------------------------------------------------------
# Apply: y from the centred input, in one pass


def apply_affine(
    centred: Tensor, residual: Tensor, inv_std: Tensor, gamma: Tensor, beta: Tensor
) -> Tensor:
    """``y = gamma * (centred - residual) * inv_std + beta``: the affine part is folded into one
    per-channel scale and offset, applied as ``centred * scale`` then ``+= offset`` in place.

    One ``addcmul(offset, centred, scale)`` would be one pass, but on the CPU an ``addcmul``
    whose first argument is the broadcast vector is slower than these two passes (1.6x measured
    on (128, 64, 24, 24)): its loop is not vectorised over the large tensor.
    """
    scale = gamma * inv_std
    offset = beta - residual * scale
    return (centred * per_channel(scale, centred)).add_(per_channel(offset, centred))


def normalise_plain(x: Tensor, gamma: Tensor, beta: Tensor, eps: float):
    """``(y, mean, var)`` in plain tensor operations, the statistics from ``var_mean`` (Welford's
    one-pass algorithm, stable): what ``torch.compile`` fuses into a reduction and one loop."""
    var, mean = torch.var_mean(x, reduce_dims(x), correction=0)
    scale = gamma * torch.rsqrt(var + eps)
    y = (x - per_channel(mean, x)) * per_channel(scale, x) + per_channel(beta, x)
    return y, mean, var


def without_argument_binding(function: type[torch.autograd.Function]):
    """The same autograd Function written the old way, ``forward(ctx, *inputs)``.

    A Function with ``setup_context`` (what ``torch.func`` needs) has its arguments bound by
    ``inspect.signature`` on every call, about 30 microseconds: a small network on the CPU
    pays it at every layer. Outside ``torch.func`` transforms this twin runs the same forward,
    ``setup_context``, backward and ``jvp`` without it.
    """

    def forward(ctx, *inputs):
        outputs = function.forward(*inputs)
        function.setup_context(ctx, inputs, outputs)
        return outputs

    methods = {"forward": staticmethod(forward), "backward": staticmethod(function.backward)}
    methods["jvp"] = staticmethod(function.jvp)
    methods["__doc__"] = f"``{function.__name__}`` for calls outside torch.func transforms."
    return type(function.__name__, (torch.autograd.Function,), methods)


def apply(function: type[torch.autograd.Function], eager: type[torch.autograd.Function], *args):
    """``function.apply(*args)`` under torch.func transforms, else ``eager.apply(*args)``."""
    if torch._C._are_functorch_transforms_active():
        return function.apply(*args)
    return eager.apply(*args)


def centre_first(function: type[torch.autograd.Function]):
    """``function(centred, gamma, beta, eps) -> (y, residual, var)``, an autograd Function that
    saves its input, as ``normalise(x, gamma, beta, eps) -> (y, mean, var)``: x is centred on
    ``first_estimate`` before the node (outside it, so the saved input leads back to x), y is
    returned in x's dtype and the mean is ``shift + residual``, never differentiable."""
    eager = without_argument_binding(function)

    def normalise(x: Tensor, gamma: Tensor, beta: Tensor, eps: float):
        shift = first_estimate(x)  # (C,) from a few examples: a fraction of a pass
        centred = x - per_channel(shift, x)  # pass 1: read x, write; float32 for float16 x
        y, residual, var = apply(function, eager, centred, gamma, beta, eps)
        return y.to(x.dtype), shift + residual, var

    return normalise


# ----------------------------------------------------------------------------------------------
# Backward: the channel sums, then the apply (collectives go between the two)


def backward_sums(
    dy: Tensor, centred: Tensor, residual: Tensor, inv_std: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(sum(dy), sum(dy * x_hat), product)`` per channel, x_hat = (centred - residual) * inv_std.

    The two sums are ``dbeta`` and ``dgamma``; summed over every process, they are all the dx
    of every process needs. ``product = dy * centred`` is returned too, a tensor of the input's
    size that ``backward_apply`` overwrites with dx: one allocation (and its page faults) fewer.
    """
    product = dy * centred  # (N, C, *)
    sum_dy = channel_sum(dy)
    sum_dy_x_hat = (channel_sum(product) - residual * sum_dy) * inv_std
    return sum_dy, sum_dy_x_hat, product


def _vmapped(t: Tensor) -> bool:
    """Whether t is seen through ``torch.func.vmap`` (or the legacy vmap of gradcheck)."""
    functorch = torch._C._functorch
    return torch._C._are_functorch_transforms_active() or functorch.is_legacy_batchedtensor(t)


def backward_apply(
    dy: Tensor,
    centred: Tensor,
    residual: Tensor,
    inv_std: Tensor,
    gamma: Tensor,
    sum_dy: Tensor,
    sum_dy_x_hat: Tensor,
    count: float | Tensor,
    out: Tensor | None = None,
) -> Tensor:
    """``dx = gamma * inv_std / m * (m * dy - sum_dy - x_hat * sum_dy_x_hat)``.

    Written ``a * dy + b * centred + c`` with per-channel a, b, c, into one tensor (``out``, the
    product of ``backward_sums``, when given): ``b * centred``, ``+= c``, ``+= a * dy``, each
    with the large tensor first (see ``apply_affine``); ``count`` is m, the number of values
    behind the statistics (of every process, for ``SyncBatchNorm``).
    """
    a = gamma * inv_std
    b = -a * inv_std * sum_dy_x_hat / count
    c = -a * sum_dy / count - b * residual
    if out is not None and _vmapped(dy):
        out = None  # vmap (gradcheck's batched gradients too) has no rule for out= arguments
    dx = torch.mul(centred, per_channel(b, dy), out=out)
    return dx.add_(per_channel(c, dy)).addcmul_(dy, per_channel(a, dy))


def backward_plain(
    dy: Tensor, x: Tensor, mean: Tensor, inv_std: Tensor, gamma: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dgamma, dbeta)`` of the closed form in plain tensor operations, from the input x
    (any per-channel shift of it) and its statistics: what ``torch.compile`` fuses, and, being
    differentiable, the backward of ``backward_with_graph``."""
    dims = reduce_dims(x)
    m = values_per_channel(x)
    x_hat = (x - per_channel(mean, x)) * per_channel(inv_std, x)
    sum_dy = dy.sum(dims)
    sum_dy_x_hat = (dy * x_hat).sum(dims)
    dx = per_channel(gamma * inv_std, x) * (
        dy - per_channel(sum_dy / m, x) - x_hat * per_channel(sum_dy_x_hat / m, x)
    )
    return dx, sum_dy_x_hat, sum_dy


def backward_with_graph(
    dy: Tensor, x: Tensor, gamma: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dgamma, dbeta)`` for a backward that is itself differentiated
    (``create_graph=True``: gradient penalties, Hessian-vector products, MAML).

    The statistics are recomputed from the saved input x with autograd operations, so the graph
    of the result reaches x through them too, as PyTorch's ``batchnorm_double_backward`` does.
    """
    var, mean = torch.var_mean(x, reduce_dims(x), correction=0)
    return backward_plain(dy, x, mean, torch.rsqrt(var + eps), gamma)


def forward_tangent(
    tangent: Tensor | None,
    tangent_gamma: Tensor | None,
    tangent_beta: Tensor | None,
    centred: Tensor,
    residual: Tensor,
    inv_std: Tensor,
    gamma: Tensor,
) -> Tensor:
    """The tangent of y (forward-mode AD, ``jvp``) from the tangents of the input, gamma, beta::

    t_x_hat = inv_std * (t - mean(t) - x_hat * mean(t * x_hat))
    t_y     = gamma * t_x_hat + t_gamma * x_hat + t_beta
    """
    dims = reduce_dims(centred)
    x_hat = (centred - per_channel(residual, centred)) * per_channel(inv_std, centred)
    t_y = torch.zeros_like(x_hat)
    if tangent is not None:
        t = tangent.to(x_hat.dtype)
        t_x_hat = t - t.mean(dims, keepdim=True) - x_hat * (t * x_hat).mean(dims, keepdim=True)
        t_y = t_y + per_channel(gamma * inv_std, centred) * t_x_hat
    if tangent_gamma is not None:
        t_y = t_y + per_channel(tangent_gamma, centred) * x_hat
    if tangent_beta is not None:
        t_y = t_y + per_channel(tangent_beta, centred)
    return t_y


class StatisticsFunction(torch.autograd.Function):
    """The autograd wiring every training-mode Function of bnlib shares.

    ``forward(x, gamma, beta, eps) -> (y, mean, var)``, x any per-channel shift of the layer's
    input and mean its per-channel mean: ``setup_context`` saves ``(x, mean, inv_std, gamma)``
    (x is the node's own input, so a backward asked to build a graph leads back to it), for
    the backward and for ``jvp`` (forward-mode AD); ``generate_vmap_rule`` gives ``vmap``.
    Subclasses write ``forward`` and ``backward``.
    """

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, gamma, _beta, eps = inputs
        _y, mean, var = output
        saved = (x, mean, torch.rsqrt(var + eps), gamma)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)

    @staticmethod
    def jvp(ctx, t_x, t_gamma, t_beta, _t_eps):
        x, mean, inv_std, gamma = ctx.saved_tensors
        return forward_tangent(t_x, t_gamma, t_beta, x, mean, inv_std, gamma), None, None


# ----------------------------------------------------------------------------------------------
# Running estimates


def update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    count: float | Tensor,
    momentum: float,
) -> None:
    """``running = (1 - momentum) * running + momentum * batch``, in place and in the buffers'
    dtype, with the *unbiased* batch variance ``var * m / (m - 1)`` (m = ``count`` values)."""
    with torch.no_grad():
        unbiased = var * (count / (count - 1))  # the estimate of the population variance
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


# ----------------------------------------------------------------------------------------------
# Precision and layout, as PyTorch's kernel


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """A context that turns autocast off where it is on: batch norm runs in its input's dtype
    (PyTorch's kernel is not autocast either), so autocast must not lower our sums to bfloat16."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def without_autocast(backward):
    """A Function's ``backward(ctx, dy, ...)`` run with autocast off, as its forward is: a
    backward called inside an autocast region would otherwise lower its sums too."""

    @functools.wraps(backward)
    def wrapped(ctx, dy: Tensor, *rest):
        with autocast_disabled(dy.device.type):
            return backward(ctx, dy, *rest)

    return wrapped


def output_layout(x: Tensor) -> Tensor:
    """x itself if contiguous, else a copy in the layout PyTorch's batch norm gives its output:
    channels-last stays channels-last (4D and 5D), any other layout becomes contiguous."""
    if x.is_contiguous() or torch._C._functorch.is_batchedtensor(x):  # vmap: no layout to keep
        return x
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return x
    return x.contiguous()
