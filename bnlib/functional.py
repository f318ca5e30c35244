"""Batch normalization written out by hand: the math, its two backward passes, the autograd wiring.

Training-time transform, per channel ``c`` (dimension 1) over every other dimension
(Ioffe and Szegedy, 2015, Algorithm 1)::

    mu_B    = mean(x)                          # batch mean
    var_B   = mean((x - mu_B) ** 2)            # biased batch variance
    x_hat   = (x - mu_B) / sqrt(var_B + eps)
    y       = gamma * x_hat + beta             # gamma, beta: ``weight``, ``bias`` in the modules

At inference the batch statistics are replaced by running estimates, so the layer becomes a fixed
per-channel affine map. ``batch_norm`` has the semantics of ``torch.nn.functional.batch_norm``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bnlib import core
from bnlib.core import per_channel, reduce_dims, values_per_channel

__all__ = [
    "reduce_dims",
    "per_channel",
    "values_per_channel",
    "batch_norm",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_backward_staged",
    "batch_stats",
    "centred_stats",
    "naive_batch_stats",
    "BatchNormFunction",
    "reference_batch_norm",
]


# ----------------------------------------------------------------------------------------------
# Statistics


def naive_batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance by the one-pass textbook formula E[x^2] - E[x]^2.

    Kept to show why ``batch_stats`` is not written this way: when the mean is large compared
    with the spread, the two terms agree in almost every digit and their difference is noise.
    """
    dims = reduce_dims(x)
    mean = x.mean(dims)
    return mean, (x * x).mean(dims) - mean * mean


def centred_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The corrected two-pass algorithm (Chan, Golub and LeVeque, 1983), keeping its pieces.

    Returns ``(shift, residual, centred, var)``: ``shift`` (C,) a first estimate of the mean,
    ``centred = x - shift``, ``residual`` (C,) the mean of ``centred`` (what the first estimate
    got wrong), and the biased variance (C,). The mean is ``shift + residual``. A float16 or
    bfloat16 input is accumulated in float32, and ``centred`` is float32 then.
    """
    dims = reduce_dims(x)
    shift = x.mean(dims, dtype=core.accumulation_dtype(x.dtype))  # (C,) first pass
    centred = x - per_channel(shift, x)  # exact when x is close to shift
    residual = centred.mean(dims)  # (C,) ~0
    var = (centred * centred).mean(dims) - residual * residual
    return shift, residual, centred, var.clamp_min(0)


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of x (N, C, *), both of shape (C,).

    The textbook one-pass formula ``E[x^2] - E[x]^2`` subtracts two nearly equal numbers when the
    mean is large compared with the spread, and loses every significant digit in float32. We use
    the corrected two-pass algorithm (Chan, Golub and LeVeque, 1983): centre on a first estimate
    of the mean, then correct both the mean and the variance with the residual mean of the
    centred values, which cancels the error of that first estimate.
    """
    shift, residual, _, var = centred_stats(x)
    return shift + residual, var


# ----------------------------------------------------------------------------------------------
# Forward and backward, side by side. The cache holds exactly what the backward needs.


def batch_norm_forward(
    x: Tensor, gamma: Tensor, beta: Tensor, eps: float
) -> tuple[Tensor, tuple[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
    """Training-mode forward with batch statistics.

    Args:
        x: input of shape (N, C, *).
        gamma, beta: scale and shift, shape (C,).
        eps: added to the variance so the division is defined when a channel is constant.

    Returns:
        ``(y, (mean, var), cache)``: y has the shape of x; mean and biased var of shape (C,);
        ``cache = (x_hat, inv_std, gamma)``, all the backward needs, with x_hat of the shape of x
        and inv_std = 1 / sqrt(var + eps) of shape (C,).
    """
    shift, residual, centred, var = centred_stats(x)
    inv_std = torch.rsqrt(var + eps)  # (C,)
    # x - mean, as (x - shift) - residual: in float32, shift + residual would round the mean
    # to the precision of a large number and shift every x_hat by that rounding error.
    x_hat = (centred - per_channel(residual, x)) * per_channel(inv_std, x)
    y = x_hat * per_channel(gamma, x) + per_channel(beta, x)
    return y, (shift + residual, var), (x_hat, inv_std, gamma)


def batch_norm_backward(dy: Tensor, cache: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, ...]:
    """Closed-form backward of ``batch_norm_forward``.

    With m values per channel and dx_hat = gamma * dy::

        dbeta  = sum(dy)
        dgamma = sum(dy * x_hat)
        dx     = inv_std / m * (m * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat))

    The last line is the staged backward below with the mean and variance branches summed by
    hand: the gradient is dx_hat projected away from the constant direction and from x_hat.

    Returns:
        ``(dx, dgamma, dbeta)`` of shapes (N, C, *), (C,), (C,).
    """
    x_hat, inv_std, gamma = cache
    dims = reduce_dims(dy)
    m = values_per_channel(dy)
    dbeta = dy.sum(dims)
    dgamma = (dy * x_hat).sum(dims)
    # sum(dx_hat) = gamma * dbeta and sum(dx_hat * x_hat) = gamma * dgamma: reuse them.
    mean_dx_hat = per_channel(gamma * dbeta / m, dy)
    mean_dx_hat_x_hat = per_channel(gamma * dgamma / m, dy)
    dx = per_channel(gamma * inv_std, dy) * dy - per_channel(inv_std, dy) * (
        mean_dx_hat + x_hat * mean_dx_hat_x_hat
    )
    return dx, dgamma, dbeta


def batch_norm_backward_staged(
    dy: Tensor, x: Tensor, gamma: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward through the computation graph, one node at a time (the chain rule, unrolled).

    Forward graph, per channel, with m values per channel::

        mu = sum(x) / m;  xc = x - mu;  var = sum(xc ** 2) / m;  std = sqrt(var + eps)
        inv = 1 / std;    x_hat = xc * inv;  y = gamma * x_hat + beta

    Each line below is the local derivative of one node, read bottom to top.

    Returns:
        ``(dx, dgamma, dbeta)`` of shapes (N, C, *), (C,), (C,).
    """
    dims = reduce_dims(x)
    m = values_per_channel(x)
    # forward again, keeping every intermediate
    mu = x.mean(dims, keepdim=True)
    xc = x - mu
    var = (xc * xc).mean(dims, keepdim=True)
    std = torch.sqrt(var + eps)
    inv = 1.0 / std
    x_hat = xc * inv
    # y = gamma * x_hat + beta
    dbeta = dy.sum(dims)
    dgamma = (dy * x_hat).sum(dims)
    dx_hat = dy * per_channel(gamma, x)
    # x_hat = xc * inv: xc receives dx_hat * inv, inv receives sum(dx_hat * xc)
    dxc = dx_hat * inv
    dinv = (dx_hat * xc).sum(dims, keepdim=True)
    # inv = 1 / std
    dstd = -dinv / (std * std)
    # std = sqrt(var + eps)
    dvar = dstd * 0.5 / std
    # var = sum(xc ** 2) / m: a second path into xc
    dxc = dxc + dvar * 2.0 * xc / m
    # xc = x - mu: x receives dxc, mu receives -sum(dxc)
    dmu = -dxc.sum(dims, keepdim=True)
    # mu = sum(x) / m: a second path into x
    dx = dxc + dmu / m
    return dx, dgamma, dbeta


class BatchNormFunction(core.StatisticsFunction):
    """Training-mode batch norm as an autograd node: our forward, our closed-form backward.

    ``(x, gamma, beta, eps) -> (y, mean, var)``; the batch statistics come out (not
    differentiable) so the running estimates can be updated without computing them again. x may
    be any per-channel shift of the input (batch norm ignores it): ``reference_batch_norm``
    passes it centred on a first estimate of the mean, so that the saved input, its own, leads
    back to x when a graph of the backward is asked for.

    Like PyTorch's kernel it saves the input and two (C,) vectors, and recomputes x_hat in the
    backward. ``core.StatisticsFunction`` gives it ``setup_context``, ``jvp`` and a vmap rule, so
    it works with ``torch.func`` (``vmap``, ``grad``, ``jvp``, ``jacrev``) and forward-mode AD.
    """

    @staticmethod
    def forward(x: Tensor, gamma: Tensor, beta: Tensor, eps: float):
        y, (mean, var), _ = batch_norm_forward(x, gamma, beta, eps)
        return y, mean, var

    @staticmethod
    @core.without_autocast
    def backward(ctx, dy: Tensor, _dmean: Tensor, _dvar: Tensor):
        x, mean, inv_std, gamma = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a backward that autograd can follow
            return (*core.backward_with_graph(dy, x, gamma, ctx.eps), None)
        x_hat = (x - per_channel(mean, x)) * per_channel(inv_std, x)  # recomputed, not saved
        return (*batch_norm_backward(dy, (x_hat, inv_std, gamma)), None)


# The readable implementation, as the modules call it: ``(x, gamma, beta, eps) -> (y, mean, var)``
reference_batch_norm = core.centre_first(BatchNormFunction)


# ----------------------------------------------------------------------------------------------
# Input checks: say what was wrong and how to fix it.


def _check_input(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    eps: float,
    *,
    local_batch: bool = True,
) -> None:
    """PyTorch's checks, with its exception types, and a sentence on what to do instead.
    ``local_batch=False``: the statistics span other processes, do not count this one's values."""
    if not isinstance(x, Tensor):
        raise TypeError(f"batch_norm expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise NotImplementedError(
            f'"batch_norm" not implemented for {x.dtype}: batch norm needs a floating-point '
            "input; convert it first, for example with x.float()"
        )
    if x.dim() < 2:
        raise ValueError(
            f"batch_norm expects an input of shape (N, C, *) with at least 2 dimensions, "
            f"got shape {tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)"
        )
    channels = x.shape[1]
    if channels == 0:
        raise ValueError(
            f"batch_norm needs at least one channel, got input of shape {tuple(x.shape)} "
            "(dimension 1 holds the channels); check the layer that produces it"
        )
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        if t is not None and t.numel() != channels:
            raise RuntimeError(
                f"{name} should contain {channels} elements not {t.numel()}: the input has "
                f"{channels} channels (dimension 1 of shape {tuple(x.shape)}); build the layer "
                f"with num_features={channels} or check which dimension holds the channels"
            )
    if training:
        if local_batch and values_per_channel(x) == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size "
                f"{x.size()}: a batch of one has no variance to normalise by; use a larger "
                "batch, DataLoader(..., drop_last=True), or call model.eval() for inference"
            )
        if (running_mean is None) != (running_var is None):
            raise ValueError(
                "running_mean and running_var must either both be None or neither be None: "
                "with only one, the running estimates cannot be updated; pass both, or neither "
                "to normalise with the batch alone"
            )
        if eps <= 0:
            raise ValueError(
                f"batch_norm eps must be positive during training, but got {eps}: a channel "
                "whose values are all equal has variance 0, and 1 / sqrt(0 + eps) must be "
                "finite; use a small positive eps such as 1e-5"
            )
    else:
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if t is None:
                raise RuntimeError(
                    f"{name} must be defined in evaluation mode (training=False): pass "
                    "running_mean and running_var, or use training=True to normalise with the "
                    "batch statistics"
                )
        if eps < 0:
            raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def _check_not_vmapped_with_running_stats(x: Tensor, running_mean: Tensor) -> None:
    """Under ``torch.func.vmap`` the batch statistics differ per vmapped sample, and the running
    estimates, one per channel, cannot receive them all: refuse, as PyTorch does."""
    batched = torch._C._functorch.is_batchedtensor
    if batched(x) and not batched(running_mean):
        raise RuntimeError(
            "Batch norm got a batched tensor as input (torch.func.vmap) while running_mean and "
            "running_var, which are updated in place in training, are not batched: set "
            "track_running_stats=False, call model.eval(), or use "
            "torch.func.replace_all_batch_norm_modules_(model) before vmap"
        )


# ----------------------------------------------------------------------------------------------
# The public function


Normalise = Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor, Tensor]]


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    normalise: Normalise | None = None,
) -> Tensor:
    r"""Batch normalization with the semantics of ``torch.nn.functional.batch_norm``.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Args:
        input: shape (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W); floating point.
        running_mean, running_var: (C,) buffers, or None. In training they are updated in place,
            ``running = (1 - momentum) * running + momentum * batch_stat``, with the *unbiased*
            batch variance; in evaluation they replace the batch statistics. Both or neither.
        weight, bias: gamma and beta, shape (C,); None means 1 and 0.
        training: use batch statistics (True) or the running ones (False).
        momentum: weight of the new batch in the running averages (PyTorch's convention).
        eps: added to the variance before the square root, positive in training. Default: 1e-5.
        normalise: the training-mode computation, ``(x, gamma, beta, eps) -> (y, mean, var)``,
            one of ``bnlib.modules.IMPLEMENTATIONS``. Default: ``reference_batch_norm``, the
            readable one. Keyword only.

    As PyTorch's: the output has the input's dtype (float16 and bfloat16 are computed in
    float32), the running estimates keep theirs, autocast does not lower the computation, the
    output is contiguous (channels-last when the input is), and an empty batch gives an empty
    output without touching the running estimates.

    Shape:
        output: same as input.

    Example::

        >>> x = torch.randn(8, 3, 4, 4)
        >>> y = batch_norm(x, None, None, training=True)
        >>> y.mean((0, 2, 3)).abs().max() < 1e-6
        tensor(True)
    """
    _check_input(input, running_mean, running_var, weight, bias, training, eps)
    with core.autocast_disabled(input.device.type):
        x = core.output_layout(input)
        channels = x.shape[1]
        gamma = weight if weight is not None else x.new_ones(channels)
        beta = bias if bias is not None else x.new_zeros(channels)

        if not training:
            # A fixed per-channel affine map, in one pass: autograd differentiates it exactly.
            dtype = core.accumulation_dtype(x.dtype)
            scale = gamma * torch.rsqrt(running_var.to(dtype) + eps)
            shift = beta - running_mean * scale
            y = torch.addcmul(per_channel(shift, x), x, per_channel(scale, x))
            return y.to(x.dtype)

        if x.numel() == 0:  # an empty batch: an empty output, the running estimates unchanged
            return (x * per_channel(gamma, x) + per_channel(beta, x)).to(x.dtype)

        if running_mean is not None:
            _check_not_vmapped_with_running_stats(x, running_mean)
        y, mean, var = (normalise or reference_batch_norm)(x, gamma, beta, eps)
        if running_mean is not None:
            core.update_running_stats(
                running_mean, running_var, mean, var, values_per_channel(x), momentum
            )
        return y
