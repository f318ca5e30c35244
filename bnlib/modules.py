"""``BatchNorm1d/2d/3d`` as ``nn.Module``s with the contract of ``torch.nn.BatchNorm*d``.

Same constructor, parameters (``weight`` is gamma, ``bias`` is beta), buffers and ``state_dict``
keys as PyTorch's, so the two can be swapped and their state dicts loaded into each other.
One keyword is ours: ``implementation`` picks the code that normalises in training mode, by its
name in ``IMPLEMENTATIONS``. As PyTorch's layers, they load checkpoints older than
``num_batches_tracked`` (state dict version 2); unlike them they cannot be scripted with
TorchScript (``torch.export`` works), and say so.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnlib import fast
from bnlib import functional as F

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "IMPLEMENTATIONS",
    "is_batch_norm",
    "masked_batch_norm",
]

# The training-mode computations, ``(x, gamma, beta, eps) -> (y, mean, var)``, for
# functional.batch_norm(..., normalise=...): same results, different speed and memory (see
# bnlib.fast). The one table of implementations: the modules, the benchmark and the tests use it.
IMPLEMENTATIONS = {
    "fast": fast.fast_batch_norm,  # the hand-written Function, few passes over memory
    "reference": F.reference_batch_norm,  # the readable one, one pass per line of the formula
    "compiled": fast.compiled_batch_norm,  # torch.compile'd kernels, compiled on first use
}


class _BatchNorm(nn.modules.batchnorm._BatchNorm):
    """What the three classes share; they differ only in the input dimensions they accept.

    A subclass of PyTorch's own base class, whose code it replaces entirely (its constructor
    is not called): code that recognises batch norm layers by ``isinstance(module,
    nn.modules.batchnorm._BatchNorm)``, such as ``torch.optim.swa_utils.update_bn`` or
    ``nn.SyncBatchNorm.convert_sync_batchnorm``, then treats bnlib's layers as PyTorch's,
    instead of skipping them without a word.
    """

    _accepted_dims: tuple[int, ...] = ()
    _version = 2  # PyTorch's: version 2 added num_batches_tracked

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        implementation: str = "fast",
    ) -> None:
        nn.Module.__init__(self)  # PyTorch's constructor would create what follows its own way
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation={implementation!r} is not one of {sorted(IMPLEMENTATIONS)}; "
                "'fast' is the default, 'reference' the readable code of bnlib.functional"
            )
        self.implementation = implementation
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:  # scale without shift, as in PyTorch 2.14's bias=False
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batch seen."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, gamma to 1 and beta to 0: a pure normaliser again."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args) -> None:
        """Checkpoints written before ``num_batches_tracked`` existed (version < 2) load with
        the current count, as in PyTorch."""
        key = prefix + "num_batches_tracked"
        old = local_metadata.get("version") is None or local_metadata["version"] < 2
        if old and self.track_running_stats and key not in state_dict:
            on_meta = self.num_batches_tracked.device.type == "meta"
            state_dict[key] = torch.tensor(0) if on_meta else self.num_batches_tracked
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    def __prepare_scriptable__(self):
        raise TypeError(
            f"torch.jit.script cannot compile bnlib's {type(self).__name__}: its training "
            "mode runs a custom torch.autograd.Function, which TorchScript does not support. "
            "Use torch.export.export(model, (example_input,)) instead, or convert the model to "
            "PyTorch's layers first: torch.jit.script(bnlib.convert(model, to='torch'))"
        )

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in self._accepted_dims:
            expected = " or ".join(f"{d}D" for d in self._accepted_dims)
            raise ValueError(
                f"expected {expected} input (got {input.dim()}D input of shape "
                f"{tuple(input.shape)}) for {type(self).__name__}"
            )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average: the mean of all batches seen
                momentum = 1.0 / float(self.num_batches_tracked)
        # Training mode normalises with the batch; so does a layer with no running estimates.
        use_batch_stats = self.training or self.running_mean is None
        # Update the running estimates only while training and tracking them.
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            self.eps,
            normalise=IMPLEMENTATIONS[self.implementation],
        )


class BatchNorm1d(_BatchNorm):
    """Batch norm over a (N, C) or (N, C, L) input, statistics per channel C.

    Args:
        num_features: C.
        eps: added to the variance for numerical stability. Default: 1e-5.
        momentum: weight of each new batch in the running estimates; None for a cumulative
            average. Default: 0.1.
        affine: learn ``weight`` (gamma) and ``bias`` (beta). Default: True.
        bias: with ``affine``, learn ``bias`` too; False keeps the scale only. Default: True.
        implementation: ``"fast"`` (default), ``"reference"`` or ``"compiled"``, see
            ``IMPLEMENTATIONS``; not part of the state dict. Keyword only.
        track_running_stats: keep running estimates for evaluation; if False, batch statistics
            are used in both modes. Default: True.

    Shape:
        input (N, C) or (N, C, L); output of the same shape.

    Example::

        >>> bn = BatchNorm1d(100)
        >>> bn(torch.randn(20, 100)).shape
        torch.Size([20, 100])
    """

    _accepted_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over a (N, C, H, W) input, statistics per channel over N, H and W.

    Arguments as ``BatchNorm1d``.

    Shape:
        input (N, C, H, W); output of the same shape.

    Example::

        >>> bn = BatchNorm2d(3)
        >>> bn(torch.randn(4, 3, 8, 8)).shape
        torch.Size([4, 3, 8, 8])
    """

    _accepted_dims = (4,)


class BatchNorm3d(_BatchNorm):
    """Batch norm over a (N, C, D, H, W) input, statistics per channel over N, D, H and W.

    Arguments as ``BatchNorm1d``.

    Shape:
        input (N, C, D, H, W); output of the same shape.

    Example::

        >>> bn = BatchNorm3d(2)
        >>> bn(torch.randn(4, 2, 3, 5, 5)).shape
        torch.Size([4, 2, 3, 5, 5])
    """

    _accepted_dims = (5,)


class _Ghost:
    """Ghost batch norm (Hoffer et al., 2017): in training, a mini-batch of more than
    ``virtual_batch_size`` examples is split, in order, into ghost batches of that many (the
    last one may be smaller), and each is normalised with its own statistics, as if it were
    the whole mini-batch of a plain layer. The running estimates are updated once per ghost
    batch, in turn (the batch counter too), as in the paper's algorithm. In evaluation mode,
    and for a mini-batch no larger than a ghost batch, it is the plain layer.

    The optimiser's batch and batch norm's batch then have two sizes: the gradient averages
    the whole mini-batch, the statistics are those of ``virtual_batch_size`` examples.
    """

    def __init__(self, num_features: int, *args, virtual_batch_size: int, **kwargs) -> None:
        if not isinstance(virtual_batch_size, int) or virtual_batch_size < 2:
            raise ValueError(
                f"virtual_batch_size must be an integer >= 2 (examples per ghost batch, each "
                f"normalised with its own statistics), got {virtual_batch_size!r}"
            )
        super().__init__(num_features, *args, **kwargs)
        self.virtual_batch_size = virtual_batch_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or input.shape[0] <= self.virtual_batch_size:
            return super().forward(input)
        ghosts = input.split(self.virtual_batch_size)
        return torch.cat([super(_Ghost, self).forward(ghost) for ghost in ghosts])


class GhostBatchNorm1d(_Ghost, BatchNorm1d):
    """``BatchNorm1d`` whose training statistics come from ghost batches of
    ``virtual_batch_size`` examples (keyword only, at least 2), see ``_Ghost``.

    Example::

        >>> bn = GhostBatchNorm1d(100, virtual_batch_size=32)
        >>> bn(torch.randn(256, 100)).shape  # 8 ghost batches, 8 updates of the statistics
        torch.Size([256, 100])
    """


class GhostBatchNorm2d(_Ghost, BatchNorm2d):
    """``BatchNorm2d`` whose training statistics come from ghost batches of
    ``virtual_batch_size`` images (keyword only, at least 2), see ``_Ghost``."""


def is_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a batch norm layer, PyTorch's (``BatchNorm*d``, ``SyncBatchNorm``)
    or bnlib's."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm | _BatchNorm)


def masked_batch_norm(layer: nn.Module, input: Tensor, mask: Tensor) -> Tensor:
    """``layer``, a ``BatchNorm1d`` (bnlib's or PyTorch's), applied to the valid steps of a
    padded batch of sequences only: its statistics, and its running estimates, are those of
    the real steps, not of the padding.

    Args:
        input: (N, C, L), sequences padded to length L.
        mask: (N, L) booleans, True where a step is real.

    Returns:
        (N, C, L): the valid steps normalised as one batch of (steps, C), the padding 0.
    """
    if input.dim() != 3:
        raise ValueError(f"expected a padded (N, C, L) input, got shape {tuple(input.shape)}")
    if mask.shape != (input.shape[0], input.shape[2]) or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a boolean (N, L) = {(input.shape[0], input.shape[2])} tensor, True "
            f"where a step is real; got {mask.dtype} of shape {tuple(mask.shape)}"
        )
    steps = input.transpose(1, 2)  # (N, L, C)
    out = steps.new_zeros(steps.shape)
    out[mask] = layer(steps[mask])  # (valid steps, C): one batch of steps
    return out.transpose(1, 2)
