"""Batch norm implementations measured side by side: time, memory saved for backward, the floor.

Every number is a measurement of this run on this machine; compare implementations through
their ratios to PyTorch's native kernel, measured in the same run, interleaved, never across runs.
An implementation the machine cannot run (``torch.compile`` without a working compiler) is
recorded as unavailable, with the reason, and the others are measured all the same.
"""

from __future__ import annotations

import ctypes
import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bnlib import fast
from bnlib.data import load_tensors, make_loader
from bnlib.labels import formatted, labels
from bnlib.models import ArticleCNN
from bnlib.modules import IMPLEMENTATIONS
from bnlib.training import seconds_per_step, set_seed

__all__ = [
    "TRAINING",
    "BenchmarkConfig",
    "keep_freed_memory",
    "saved_bytes",
    "copy_bandwidth",
    "floor_bytes",
    "two_pass_floor_bytes",
    "unavailable_reason",
    "benchmark",
    "forward_backward_seconds",
    "format_table",
    "StepTimeConfig",
    "training_step_times",
]

Implementation = Callable[[Tensor, Tensor, Tensor], Tensor]


def _training(normalise) -> Implementation:
    """``(x, gamma, beta) -> y`` from a ``(x, gamma, beta, eps) -> (y, mean, var)``, eps 1e-5."""
    return lambda x, gamma, beta: normalise(x, gamma, beta, 1e-5)[0]


# Training-mode batch norm, (x, gamma, beta) -> y, eps = 1e-5, no running statistics: the
# implementations of the modules (one table, ``bnlib.modules.IMPLEMENTATIONS``) between the
# formula as autograd sees it and PyTorch's native kernel.
TRAINING: dict[str, Implementation] = {
    # the formula one autograd operation at a time: autograd saves what each one needs
    "naive": _training(fast.textbook_batch_norm),
    # "reference" (the readable Function), "fast" (fewer passes), "compiled" (torch.compile)
    **{name: _training(IMPLEMENTATIONS[name]) for name in ("reference", "fast", "compiled")},
    # PyTorch's native kernel
    "native": lambda x, g, b: torch.nn.functional.batch_norm(x, None, None, g, b, True),
}


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to measure: input shapes (N, C, *), implementations (keys of ``TRAINING``)."""

    shapes: tuple[tuple[int, ...], ...] = ((128, 64, 24, 24), (256, 128))
    implementations: tuple[str, ...] = ("naive", "reference", "fast", "compiled", "native")
    repeats: int = 30
    warmup: int = 3
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    seed: int = 0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.cache
def keep_freed_memory() -> bool:
    """Ask the C allocator (glibc, on Linux) to keep freed memory for the process's next
    allocations, instead of handing it back to the system; returns whether it could.

    A tensor of several MiB is otherwise mapped fresh from the system (or the heap trimmed
    when it is freed): its next owner pays a page fault per 4 KiB page it touches, which costs
    as much as the batch norm itself (on (128, 64, 24, 24), the native kernel's fwd+bwd went
    from 9-18 ms to 8.3-9.8 ms). Which implementation pays them depends on what the previous
    one freed, so timings taken side by side would compare the allocator, not the kernels.
    For the rest of the process: its resident memory then stays at its peak.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    # 32 MiB is the largest threshold glibc accepts for mmap, 1 GiB is ample for the trim one
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(mallopt(m_trim_threshold, 2**30))


def saved_bytes(
    normalise: Implementation, x: Tensor, gamma: Tensor, beta: Tensor
) -> tuple[int, Tensor]:
    """Bytes that one forward pass keeps for its backward pass, and its output.

    Counted with ``saved_tensors_hooks``: each storage once, whatever the views saved on it.
    """
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = normalise(x, gamma, beta)
    return sum(storages.values()), y


def copy_bandwidth(x: Tensor, repeats: int = 30) -> float:
    """Bytes per second that a plain copy of ``x`` moves (reads plus writes) on its device."""
    target = torch.empty_like(x)
    times = []
    for i in range(repeats + 3):
        _synchronize(x.device)
        start = time.perf_counter()
        target.copy_(x)
        _synchronize(x.device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 2 * x.nbytes / statistics.median(times)


def floor_bytes(x: Tensor) -> int:
    """The traffic no training-mode batch norm avoids: read x, write y (forward); read the
    output gradient and x, write the input gradient (backward). Five tensors of x's size."""
    return 5 * x.nbytes


def two_pass_floor_bytes(x: Tensor) -> int:
    """The traffic of a batch norm that computes its statistics before normalising, on a tensor
    larger than the cache: read x twice and write y (forward); read the output gradient and x
    twice (its two sums, then the gradient) and write the input gradient (backward). Eight
    tensors of x's size."""
    return 8 * x.nbytes


def forward_backward_seconds(
    normalise: Implementation, x: Tensor, gamma: Tensor, beta: Tensor, dy: Tensor
) -> float:
    """Wall time of one forward and backward pass (gradients reset first)."""
    x.grad = gamma.grad = beta.grad = None
    _synchronize(x.device)
    start = time.perf_counter()
    normalise(x, gamma, beta).backward(dy)
    _synchronize(x.device)
    return time.perf_counter() - start


def unavailable_reason(error: Exception) -> str:
    """Why an implementation cannot run here, in one line: the exception's type and the first
    line of its message; for a compiler's failure, the type and first line of the error the
    compiler met (``BackendCompilerFailed`` wraps it)."""
    inner = getattr(error, "inner_exception", None)
    message = str(error if inner is None else inner)
    first_line = next((line.strip() for line in message.splitlines() if line.strip()), "")
    parts = [type(error).__name__, type(inner).__name__ if inner is not None else "", first_line]
    text = ": ".join(part for part in parts if part)
    return text if len(text) <= 200 else text[:199] + "…"


def _first_call(normalise: Implementation, tensors: tuple[Tensor, ...]) -> float | str:
    """Seconds of the first forward + backward (compilation included), or, when a compiler
    fails on it, the reason (``unavailable_reason``). Any other error is raised."""
    try:
        return forward_backward_seconds(normalise, *tensors)
    except RuntimeError as error:
        from torch._dynamo.exc import BackendCompilerFailed  # already imported by compiling

        if not isinstance(error, BackendCompilerFailed):
            raise
        return unavailable_reason(error)


def benchmark(config: BenchmarkConfig = BenchmarkConfig()) -> list[dict]:
    """Forward + backward time and saved memory of each implementation, for each shape.

    The implementations take turns within each repetition, each in turn going first, so a
    slow moment of the machine hits them alike; freed memory is kept for the process
    (``keep_freed_memory``), so that none pays the page faults of what another freed. Returns
    one row per (shape, implementation) with ``ms`` (median), ``time_ratio`` to ``native``
    (the median of the ratios within each repetition), ``memory_ratio`` to ``native``,
    ``saved_bytes``, and the shape's
    ``floor_ms`` (floor bytes at the measured copy bandwidth); ``first_call_s`` is the first
    forward + backward, which includes compilation for ``compiled``. ``available`` is False
    when the machine's compiler failed on the implementation (``torch.compile`` raised
    ``BackendCompilerFailed``): ``reason`` then says why (the exception's type and first
    line) and its measurements are NaN; the other implementations are measured as usual.
    """
    unknown = set(config.implementations) - set(TRAINING)
    if unknown:
        raise ValueError(f"unknown implementations {sorted(unknown)}; choose from {list(TRAINING)}")
    keep_freed_memory()
    generator = torch.Generator().manual_seed(config.seed)
    return [row for shape in config.shapes for row in _measure(shape, config, generator)]


def _measure(shape: tuple[int, ...], config: BenchmarkConfig, generator) -> list[dict]:
    factory = {"dtype": config.dtype, "device": config.device}
    x = torch.randn(shape, generator=generator, dtype=config.dtype).to(config.device)
    dy = torch.randn(shape, generator=generator, dtype=config.dtype).to(config.device)
    tensors = (
        x.requires_grad_(),
        torch.ones(shape[1], **factory, requires_grad=True),  # gamma
        torch.zeros(shape[1], **factory, requires_grad=True),  # beta
        dy,
    )
    first_call = {name: _first_call(TRAINING[name], tensors) for name in config.implementations}
    reasons = {name: value for name, value in first_call.items() if isinstance(value, str)}
    names = [name for name in config.implementations if name not in reasons]
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(config.warmup - 1 + config.repeats):
        turn = repeat % len(names)  # each implementation in turn goes first, then the next
        for name in names[turn:] + names[:turn]:
            seconds = forward_backward_seconds(TRAINING[name], *tensors)
            if repeat >= config.warmup - 1:
                times[name].append(seconds)
    floor = {
        "floor_ms": 1000 * floor_bytes(x) / copy_bandwidth(x.detach()),
        "floor_bytes": floor_bytes(x),
    }
    nan = float("nan")
    rows = [
        {
            "shape": tuple(shape),
            "implementation": name,
            "available": name not in reasons,
            "reason": reasons.get(name),
            "ms": nan if name in reasons else 1000 * statistics.median(times[name]),
            "first_call_s": nan if name in reasons else first_call[name],
            "saved_bytes": nan if name in reasons else saved_bytes(TRAINING[name], *tensors[:3])[0],
            **floor,
        }
        for name in config.implementations
    ]
    native = next((r for r in rows if r["implementation"] == "native" and r["available"]), None)
    for row in rows:
        measured = native and row["available"]
        ratio = _paired_ratio(times[row["implementation"]], times["native"]) if measured else nan
        row["time_ratio"] = ratio
        row["memory_ratio"] = row["saved_bytes"] / native["saved_bytes"] if native else nan
    return rows


def _paired_ratio(times: Sequence[float], native: Sequence[float]) -> float:
    """The median over the repetitions of each repetition's time over native's in the same
    repetition: a slow moment of the machine slows both terms of a ratio, and the median
    leaves out the repetitions it hit one of them only."""
    return statistics.median(t / n for t, n in zip(times, native, strict=True))


def format_table(rows: Sequence[dict], lang: str = "en") -> str:
    """The rows of ``benchmark`` as a plain-text table in ``lang`` ("en" or "fr", whose numbers
    take a decimal comma), one block per shape; an unavailable implementation's line gives its
    reason. The words come from ``bnlib.labels``."""
    words = labels(lang)

    def number(value: float, spec: str) -> str:
        return formatted(value, spec, lang)

    lines = []
    header = (
        f"{words['table_implementation']:<14}{words['table_fwd_bwd_ms']:>12}"
        f"{words['table_x_native']:>10}{words['table_saved_mib']:>11}{words['table_x_native']:>10}"
    )
    for shape in dict.fromkeys(row["shape"] for row in rows):
        block = [row for row in rows if row["shape"] == shape]
        floor = block[0]
        mib, ms = number(floor["floor_bytes"] / 2**20, ".1f"), number(floor["floor_ms"], ".2f")
        lines.append(words["table_shape"].format(shape=shape, mib=mib, ms=ms))
        lines.append(header)
        for row in block:
            name = f"{row['implementation']:<14}"
            if not row["available"]:
                lines.append(name + words["table_unavailable"].format(reason=row["reason"]))
                continue
            lines.append(
                name
                + number(row["ms"], ">12.3f")
                + number(row["time_ratio"], ">10.2f")
                + number(row["saved_bytes"] / 2**20, ">11.2f")
                + number(row["memory_ratio"], ">10.2f")
            )
            if row["implementation"] == "compiled":
                seconds = number(row["first_call_s"], ".1f")
                lines[-1] += "   " + words["table_first_call"].format(seconds=seconds)
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class StepTimeConfig:
    """Training steps of the article's CNN to time, for each ``norm`` of ``ArticleCNN``."""

    norms: tuple[str | None, ...] = ("torch", "bnlib")
    batch_size: int = 64
    num_steps: int = 10  # timed steps per round, after 2 warm-up steps
    rounds: int = 3  # the norms take turns, ``rounds`` times
    lr: float = 0.05
    sgd_momentum: float = 0.9
    device: str = "cpu"
    seed: int = 0


def training_step_times(config: StepTimeConfig = StepTimeConfig()) -> dict[str | None, float]:
    """Seconds per training step (forward, backward, SGD update) of the article's CNN on
    Fashion-MNIST for each norm: the median over the rounds of each round's median step.
    Freed memory is kept for the process (``keep_freed_memory``), as ``benchmark`` does."""
    keep_freed_memory()
    limit = config.batch_size * (config.num_steps + 4)
    X, y = load_tensors("fashion-mnist", train=True, limit=limit)
    times: dict[str | None, list[float]] = {norm: [] for norm in config.norms}
    for _ in range(config.rounds):
        for norm in config.norms:
            set_seed(config.seed)
            model = ArticleCNN(norm=norm).to(config.device)
            optimizer = torch.optim.SGD(
                model.parameters(), lr=config.lr, momentum=config.sgd_momentum
            )
            loader = make_loader(X, y, config.batch_size, seed=config.seed)
            seconds = seconds_per_step(model, loader, optimizer, num_steps=config.num_steps)
            times[norm].append(seconds)
    return {norm: statistics.median(values) for norm, values in times.items()}
