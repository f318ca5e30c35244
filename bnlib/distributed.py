"""Batch norm across processes: statistics of the whole batch when each process holds a slice.

With data parallelism (``DistributedDataParallel``) every process normalises with the statistics of
its own slice of the mini-batch. ``SyncBatchNorm`` computes them over the slices of all processes,
as one process would on the concatenated batch, with ``torch.distributed`` collectives: it works
with the ``gloo`` backend on CPU processes as well as with NCCL on GPUs (PyTorch's own
``torch.nn.SyncBatchNorm`` runs on GPUs only).

Forward, per channel: each process computes the count, mean and sum of squared deviations of its
own slice (the stable two-pass of ``functional.batch_stats``), one all-gather hands every process
all of them (in float64: a few numbers per channel), and each merges them with the pairwise
formula of Chan, Golub and LeVeque (1983), stable too::

    all-gather [n_p, mean_p, m2_p]    -> n = sum(n_p), mean = sum(n_p * mean_p) / n,
                                         var = (sum(m2_p) + sum(n_p * (mean_p - mean) ** 2)) / n

as PyTorch's ``SyncBatchNorm`` gathers each process's (mean, invstd, count) once. Backward: the two
per-channel sums of the closed form, ``sum(dy)`` and ``sum(dy * x_hat)``, are all-reduced; the
gradients of weight and bias stay local (DDP all-reduces them, as for any parameter). Two
collectives per layer and training step, one each way. Everything else (centring, the apply, the
channel sums, the running update, float32 accumulation for float16 inputs) is ``bnlib.core``'s:
this module adds only the collectives between those pieces.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from bnlib import core
from bnlib import functional as F
from bnlib.convert import _twin
from bnlib.modules import BatchNorm2d, _BatchNorm

__all__ = [
    "SyncBatchNorm",
    "spawn",
    "compare_with_one_process",
    "collectives_and_stats",
    "ProofConfig",
    "proof",
    "CollectivesConfig",
    "counted_collectives",
]


def _all_reduce(t: Tensor, group) -> Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def _gathered_stats(x: Tensor, group) -> tuple[Tensor, Tensor, Tensor]:
    """The per-channel mean and biased variance of the values of every process, and their count,
    from one all-gather of each process's (count, mean, sum of squared deviations).

    The slices' statistics travel and merge in float64: a few numbers per channel, but a mean
    rounded to float32 would lose the small differences between slices that the merge needs when
    the mean is large next to the spread.
    """
    C = x.shape[1]
    if x.numel():
        shift, residual, _, var = F.centred_stats(x)  # stable within the slice
        local_mean = shift.double() + residual.double()  # exact sum of the two parts
        local_count = torch.full((1,), float(F.values_per_channel(x)), device=x.device)
        local_m2 = var.double() * local_count.double()
    else:  # an empty slice contributes nothing
        local_mean = local_m2 = torch.zeros(C, dtype=torch.float64, device=x.device)
        local_count = torch.zeros(1, device=x.device)
    local = torch.cat([local_count.double(), local_mean, local_m2])  # (1 + 2C,)
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local, group=group)
    gathered = torch.stack(parts)  # (P, 1 + 2C)
    counts, means, m2 = gathered[:, :1], gathered[:, 1 : 1 + C], gathered[:, 1 + C :]
    count = counts.sum()
    mean = (counts * means).sum(0) / count  # (C,)
    spread = (counts * (means - mean) ** 2).sum(0)  # between the slices
    var = ((m2.sum(0) + spread) / count).clamp_min(0)
    dtype = core.accumulation_dtype(x.dtype)  # float32 for float16: a count past 65,504 overflows
    return mean.to(dtype), var.to(dtype), count.to(dtype)


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm whose statistics and backward sums span every process of ``group``.

    The pieces of ``bnlib.core``, with one collective between the statistics and the apply in
    the forward (``_gathered_stats``), and one between the channel sums and the apply in the
    backward. Returns ``(y, mean, var, count)``: the global batch mean, biased variance and
    number of values per channel (not differentiable), for the running estimates.
    """

    @staticmethod
    def forward(ctx, x: Tensor, gamma: Tensor, beta: Tensor, eps: float, group):
        mean, var, count = _gathered_stats(x, group)  # collective: all-gather
        inv_std = torch.rsqrt(var + eps)
        centred = x - core.per_channel(mean, x)  # on the global mean; float32 for float16 x
        residual = torch.zeros_like(mean)  # centred on the exact mean: nothing left over
        y = core.apply_affine(centred, residual, inv_std, gamma, beta)
        ctx.save_for_backward(centred, residual, inv_std, gamma, count)
        ctx.group, ctx.input_dtype = group, x.dtype
        ctx.mark_non_differentiable(mean, var, count)
        return y.to(x.dtype), mean, var, count

    @staticmethod
    @core.without_autocast
    def backward(ctx, dy: Tensor, _dmean, _dvar, _dcount):
        if torch.is_grad_enabled():
            raise NotImplementedError(
                "SyncBatchNorm has no second derivative across processes (create_graph=True): "
                "its backward sums travel by a collective that autograd does not follow; use "
                "BatchNorm*d on each process, or a first-order method"
            )
        centred, residual, inv_std, gamma, count = ctx.saved_tensors
        # dbeta, dgamma stay local (DDP all-reduces parameter gradients); dx needs global sums
        dbeta, dgamma, product = core.backward_sums(dy, centred, residual, inv_std)
        sums = _all_reduce(torch.cat([dbeta, dgamma]), ctx.group)  # collective: all-reduce
        C = dbeta.shape[0]
        dx = core.backward_apply(
            dy, centred, residual, inv_std, gamma, sums[:C], sums[C:], count, out=product
        )
        return dx.to(ctx.input_dtype), dgamma, dbeta, None, None


class SyncBatchNorm(_BatchNorm):
    """``BatchNorm1d/2d/3d`` whose training statistics span all the processes of a group.

    Same arguments, parameters, buffers and ``state_dict`` as ``bnlib.BatchNorm2d``, plus
    ``process_group`` (default: the whole world), sixth positional argument as in
    ``torch.nn.SyncBatchNorm``. Outside training, or when ``torch.distributed`` is not
    initialised or has one process, it is an ordinary batch norm. Every process must call it
    the same number of times, as with any collective.

    Example::

        >>> model = SyncBatchNorm.convert_sync_batchnorm(model)  # inside each process
        >>> ddp = torch.nn.parallel.DistributedDataParallel(model)
    """

    _accepted_dims = (2, 3, 4, 5)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group=None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, **kwargs
        )
        self.process_group = process_group

    def _synchronised(self) -> bool:
        return (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.process_group) > 1
        )

    def forward(self, input: Tensor) -> Tensor:
        if not self._synchronised():
            return super().forward(input)
        self._check_input_dim(input)
        F._check_input(input, None, None, self.weight, self.bias, True, self.eps, local_batch=False)
        C = input.shape[1]
        gamma = self.weight if self.weight is not None else input.new_ones(C)
        beta = self.bias if self.bias is not None else input.new_zeros(C)
        with core.autocast_disabled(input.device.type):
            y, mean, var, count = SyncBatchNormFunction.apply(
                core.output_layout(input), gamma, beta, self.eps, self.process_group
            )
        if count.item() <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got {int(count.item())} "
                "across all processes; use larger per-process batches"
            )
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
            core.update_running_stats(
                self.running_mean, self.running_var, mean, var, count, momentum
            )
        return y

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group=None) -> nn.Module:
        """Replace every ``BatchNorm1d/2d/3d`` (PyTorch's or bnlib's) in ``module`` by a
        ``SyncBatchNorm`` holding the same parameters (the same ``Parameter`` objects), statistics
        and mode, in place like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``; returns the
        converted module. Wrap it in ``DistributedDataParallel`` afterwards."""
        batch_norms = (nn.modules.batchnorm._BatchNorm, _BatchNorm)
        if isinstance(module, batch_norms) and not isinstance(module, cls):
            converted = _twin(module, cls)
            converted.process_group = process_group
            # the same Parameter objects, as PyTorch does: an optimiser built before still works
            for name, parameter in module.named_parameters(recurse=False):
                setattr(converted, name, parameter)
            return converted
        for name, child in list(module.named_children()):
            setattr(module, name, cls.convert_sync_batchnorm(child, process_group))
        return module

    def extra_repr(self) -> str:
        return super().extra_repr() + ", synchronised across processes"


# ----------------------------------------------------------------------------------------------
# Launching processes from a notebook or a test


def _worker(rank: int, world_size: int, fn, args, out_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    # The processes meet through a file, not a TCP port picked beforehand: a port found free then
    # released can be taken by another process before rank 0 binds it (several notebooks or tests
    # start processes at once). gloo then binds its own connections itself.
    store = Path(out_dir) / "rendezvous"
    dist.init_process_group("gloo", init_method=store.as_uri(), rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, world_size: int, *args) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes joined by a ``gloo``
    process group on 127.0.0.1 (they meet through a file in a temporary folder), and return
    their results in rank order.

    ``fn`` must be importable (defined in a module, not in a notebook cell) since each process
    starts afresh. One thread per process, so the processes do not compete for the cores.
    Scripts are better launched with ``torchrun --nproc_per_node=N script.py``.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _worker,
            args=(world_size, fn, args, out_dir),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        return [torch.load(Path(out_dir) / f"rank{r}.pt") for r in range(world_size)]


# ----------------------------------------------------------------------------------------------
# The proof: synchronised slices equal one process on the whole batch


def _example_batch(sizes: tuple[int, ...], step: int, channels: int) -> tuple[Tensor, Tensor]:
    """The global batch (and an output gradient) of ``step``: sum(sizes) examples, float64."""
    g = torch.Generator().manual_seed(step)
    x = 3 * torch.randn(sum(sizes), channels, 4, 5, generator=g, dtype=torch.float64) + step
    return x, torch.randn(x.shape, generator=g, dtype=torch.float64)


def _three_passes(layer: nn.Module, sizes, channels, rank: int | None) -> dict:
    """Two training steps and an evaluation pass; ``rank`` None: the whole batch, else a slice."""
    results = []
    for step, training in ((0, True), (1, True), (2, False)):
        layer.train(training)
        layer.zero_grad()
        x, dy = _example_batch(sizes, step, channels)
        if rank is not None:
            start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
            x, dy = x[start:stop], dy[start:stop]
        x = x.clone().requires_grad_()
        y = layer(x)
        y.backward(dy)
        grads = torch.cat([layer.weight.grad, layer.bias.grad])
        if rank is not None:
            dist.all_reduce(grads)  # what DDP does with parameter gradients (then averages)
        results.append({"y": y.detach(), "dx": x.grad, "grads": grads})
    return {"steps": results, "state": layer.state_dict()}


def _synchronised_rank(rank: int, world_size: int, sizes, channels, state) -> dict:
    layer = SyncBatchNorm(channels, momentum=None).double()
    layer.load_state_dict(state)
    return _three_passes(layer, sizes, channels, rank)


def compare_with_one_process(sizes: tuple[int, ...] = (3, 5), channels: int = 3) -> dict:
    """Run ``SyncBatchNorm`` on ``len(sizes)`` processes holding slices of ``sizes`` examples,
    and ``BatchNorm2d`` on one process holding the whole batch, from the same state: two
    training steps then an evaluation pass, in float64.

    Returns:
        The largest absolute differences: ``output`` and ``grad_input`` (slices put back
        together), ``grad_parameters`` (summed over processes), ``running_stats``.
    """
    start = BatchNorm2d(channels).double()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for t in (start.weight, start.bias, start.running_mean):
            t.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
    state = start.state_dict()
    ranks = spawn(_synchronised_rank, len(sizes), tuple(sizes), channels, state)
    single = BatchNorm2d(channels, momentum=None).double()
    single.load_state_dict(state)
    want = _three_passes(single, sizes, channels, None)
    diffs = dict.fromkeys(("output", "grad_input", "grad_parameters", "running_stats"), 0.0)
    for step, expected in enumerate(want["steps"]):
        got = [r["steps"][step] for r in ranks]
        for key, name in (("y", "output"), ("dx", "grad_input")):
            whole = torch.cat([g[key] for g in got])
            diffs[name] = max(diffs[name], (whole - expected[key]).abs().max().item())
        for g in got:
            gap = (g["grads"] - expected["grads"]).abs().max().item()
            diffs["grad_parameters"] = max(diffs["grad_parameters"], gap)
    for r in ranks:
        for key, value in want["state"].items():
            gap = (r["state"][key].double() - value.double()).abs().max().item()
            diffs["running_stats"] = max(diffs["running_stats"], gap)
    return diffs


def _counted_rank(rank: int, world_size: int, x: Tensor) -> dict:
    """One training step of a ``SyncBatchNorm`` on this rank's slice of ``x``, counting the
    collectives it calls; returns the counts and the layer's batch statistics."""
    counts = {"all_gather": 0, "all_reduce": 0}
    originals = {name: getattr(dist, name) for name in counts}

    def counted(name):
        def call(*args, **kwargs):
            counts[name] += 1
            return originals[name](*args, **kwargs)

        return call

    layer = SyncBatchNorm(x.shape[1], momentum=1.0).to(x.dtype)  # running stats := this batch's
    piece = x.tensor_split(world_size)[rank].clone().requires_grad_()
    try:
        for name in counts:
            setattr(dist, name, counted(name))
        layer(piece).sum().backward()
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)
    return {"counts": counts, "mean": layer.running_mean, "running_var": layer.running_var}


def collectives_and_stats(x: Tensor, world_size: int = 2) -> list[dict]:
    """A training step of one ``SyncBatchNorm`` on ``world_size`` processes, each holding a
    slice of ``x`` (split along the batch): per rank, the number of each collective called
    (``{"all_gather": ..., "all_reduce": ...}``), the global mean and the unbiased variance the
    layer computed."""
    return spawn(_counted_rank, world_size, x)


# ----------------------------------------------------------------------------------------------
# The same two questions as configurations, for ``bnlib.experiments.run``: each start of the
# processes costs seconds, and the cache then serves both twins of a page one answer


@dataclass(frozen=True)
class ProofConfig:
    """``compare_with_one_process(sizes, channels)`` as a configuration."""

    sizes: tuple[int, ...] = (3, 5)
    channels: int = 3


def proof(config: ProofConfig) -> dict:
    """``compare_with_one_process`` on ``config``'s slices: the largest differences."""
    return compare_with_one_process(tuple(config.sizes), config.channels)


@dataclass(frozen=True)
class CollectivesConfig:
    """``collectives_and_stats`` on a standard normal float32 batch of ``shape``, drawn from
    ``seed``, split among ``world_size`` processes."""

    shape: tuple[int, ...] = (8, 3, 4, 4)
    world_size: int = 2
    seed: int = 0


def counted_collectives(config: CollectivesConfig) -> list[dict]:
    """``collectives_and_stats`` on ``config``'s batch: per rank, the collectives and statistics."""
    x = torch.randn(config.shape, generator=torch.Generator().manual_seed(config.seed))
    return collectives_and_stats(x, config.world_size)
