"""Training and evaluation loops. They return numbers; they draw and print nothing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlib.data import Batches
from bnlib.modules import is_batch_norm
from bnlib.seeds import set_seed

__all__ = [
    "set_seed",
    "default_device",
    "evaluate",
    "predict",
    "confusion_matrix",
    "train_steps",
    "seconds_per_step",
    "seconds_per_forward",
    "recalibrate",
    "frozen_statistics",
    "accumulation_gap",
    "stacked_batches",
    "train_stacked_steps",
    "evaluate_stacked",
    "predict_stacked",
]


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# Images per forward pass in evaluation mode, where the grouping does not change the answer: on
# one CPU thread the article's CNN evaluates 1000 test images about 2.5 times faster in chunks of
# 100 with channels-last convolution weights than in one batch of 1000 as stored (0.46 s against
# 1.17 s, measured); a batch of 1000 stores 150 MB of activations per layer.
IMAGE_CHUNK = 100


@contextmanager
def _channels_last(model: nn.Module, X: Tensor) -> Iterator[None]:
    """For images (4-D ``X``): the model's 4-D weights (its convolutions') in channels-last order
    for the duration, then as they were. The values, and the Parameter objects that an optimizer
    or DistributedDataParallel holds, stay the same; only the layout of their memory changes."""
    if X.dim() != 4:
        yield
        return
    swapped = [p for p in model.parameters() if p.dim() == 4 and p.is_contiguous()]
    for p in swapped:
        p.data = p.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for p in swapped:
            p.data = p.data.contiguous()


def _chunk(X: Tensor, batch_size: int, train_mode: bool) -> int:
    """Images per forward pass: ``batch_size``; in evaluation mode at most ``IMAGE_CHUNK`` for
    images, since each image is then computed on its own."""
    return batch_size if train_mode or X.dim() != 4 else min(batch_size, IMAGE_CHUNK)


@torch.no_grad()
def evaluate(
    model: nn.Module, X: Tensor, y: Tensor, batch_size: int = 1000, train_mode: bool = False
) -> tuple[float, float]:
    """Mean negative log-likelihood and accuracy of ``model`` on (X, y), in eval mode.

    ``train_mode=True`` evaluates the way a forgotten ``model.eval()`` does: batch norm uses each
    test batch's statistics (and updates its running estimates with them), dropout stays on;
    ``batch_size`` is then the batch whose statistics are used. The model's mode is restored
    afterwards.
    """
    was_training = model.training
    model.train(train_mode)
    device = next(model.parameters()).device
    loss, correct = 0.0, 0
    step = _chunk(X, batch_size, train_mode)
    with _channels_last(model, X):
        for start in range(0, len(X), step):
            xb, yb = X[start : start + step].to(device), y[start : start + step].to(device)
            log_probs = model(xb)
            loss += F.nll_loss(log_probs, yb, reduction="sum").item()
            correct += (log_probs.argmax(1) == yb).sum().item()
    model.train(was_training)
    return loss / len(X), correct / len(X)


@torch.no_grad()
def predict(model: nn.Module, X: Tensor, batch_size: int = 1000) -> Tensor:
    """Predicted classes of ``model`` in eval mode, shape (N,); the model's mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    step = _chunk(X, batch_size, train_mode=False)
    with _channels_last(model, X):
        chunks = [model(X[i : i + step].to(device)).argmax(1).cpu() for i in range(0, len(X), step)]
    model.train(was_training)
    return torch.cat(chunks)


def confusion_matrix(y_true: Tensor, y_pred: Tensor, num_classes: int = 10) -> Tensor:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    index = y_true * num_classes + y_pred
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def train_steps(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    num_steps: int,
    on_step: Callable[[int, nn.Module, float], None] | None = None,
) -> list[float]:
    """Run ``num_steps`` optimisation steps on the negative log-likelihood.

    Args:
        batches: an iterable of (inputs, labels), restarted as often as needed (a DataLoader);
            one that yields nothing (empty, or an exhausted generator) raises ValueError.
        on_step: called as ``on_step(step, model, loss)`` after each step, to record anything.

    Returns:
        The training loss of every step.
    """
    device = next(model.parameters()).device
    model.train()
    losses: list[float] = []
    while len(losses) < num_steps:
        steps_before = len(losses)
        for xb, yb in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = F.nll_loss(model(xb.to(device)), yb.to(device))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(len(losses), model, losses[-1])
            if len(losses) == num_steps:
                break
        if len(losses) == steps_before:  # a pass that yielded nothing: empty or exhausted
            raise ValueError(
                f"batches yielded no batch after {steps_before} of {num_steps} steps: it is "
                "empty, or an iterator that cannot restart (a generator); pass a DataLoader "
                "or a list, which can be iterated again"
            )
    return losses


def seconds_per_step(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    num_steps: int = 10,
    warmup: int = 2,
) -> float:
    """Median wall time of one training step (forward, backward, update), after ``warmup`` steps.

    Timings vary from run to run and machine to machine: report them as measured, never cache.
    """
    times: list[float] = []

    def clock(step, _model, _loss):
        times.append(time.perf_counter())

    start = time.perf_counter()
    train_steps(model, batches, optimizer, warmup + num_steps, on_step=clock)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    durations = [b - a for a, b in zip([start, *times[:-1]], times, strict=True)][warmup:]
    return statistics.median(durations)


@torch.no_grad()
def seconds_per_forward(model: nn.Module, x: Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``model(x)`` in eval mode, without gradients (inference)."""
    was_training = model.training
    model.eval()
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        model(x)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    model.train(was_training)
    return statistics.median(times)


@torch.no_grad()
def recalibrate(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_batches: int
) -> nn.Module:
    """Recompute every batch norm's running statistics as the plain average over ``num_batches``
    training batches, with the weights fixed: a pass in train mode without gradients.

    Useful after training (the running averages lag behind the last weights) or after any change
    that moved the statistics (fine-tuning, a pass in the wrong mode). Dropout is switched off
    during the pass so the statistics are those the network sees at inference. Returns the model,
    in eval mode.
    """
    norms = [m for m in model.modules() if is_batch_norm(m)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch weighs the same
    model.eval()
    for m in norms:
        m.train()
    device = next(model.parameters()).device
    for i, (xb, _) in enumerate(batches):
        if i == num_batches:
            break
        model(xb.to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


@contextmanager
def frozen_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the batch norm layers of ``model`` in training mode still normalise with
    their batch's statistics (and backpropagate through them), but leave their running statistics
    and their counter as they were: for a second forward pass over data they have already seen,
    such as the perturbed pass of sharpness-aware minimisation or the recomputation of gradient
    checkpointing. Inside, each layer's momentum is 0 (PyTorch's and bnlib's layers then keep
    their running averages exactly, whatever the momentum was, ``None`` included); on exit the
    momentum and the counter ``num_batches_tracked`` (which still counts) are put back::

        with frozen_statistics(model):
            loss_fn(model(x_perturbed), y).backward()  # SAM's second pass

        checkpoint(block, x, use_reentrant=False,  # the recomputation leaves them alone
                   context_fn=lambda: (nullcontext(), frozen_statistics(block)))
    """
    norms = [m for m in model.modules() if is_batch_norm(m) and m.track_running_stats]
    kept = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield model
    finally:
        for m, (momentum, counted) in zip(norms, kept, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(counted)


def accumulation_gap(model: nn.Module, x: Tensor, y: Tensor, micro_batches: int) -> float:
    """How far gradient accumulation lands from the gradient of one mini-batch: the norm of
    ``sum_k grad(loss_k / K)`` over ``K = micro_batches`` equal slices of (x, y), minus the
    gradient of the loss on the whole of (x, y), relative to that gradient's norm.

    Zero, to rounding, for a network whose examples do not interact (no batch norm); batch norm
    normalises each slice with its own statistics. The model's mode and state are used as they
    are (in training mode, its running statistics move at each of the ``K + 1`` passes).
    """
    if len(x) % micro_batches:
        raise ValueError(
            f"{len(x)} examples do not split into {micro_batches} equal micro-batches: "
            "accumulation averages equal slices"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    whole = torch.autograd.grad(F.nll_loss(model(x), y), params)
    parts = [
        torch.autograd.grad(F.nll_loss(model(xm), ym) / micro_batches, params)
        for xm, ym in zip(x.chunk(micro_batches), y.chunk(micro_batches), strict=True)
    ]
    accumulated = [sum(grads) for grads in zip(*parts, strict=True)]
    gap = sum((a - w).pow(2).sum() for a, w in zip(accumulated, whole, strict=True)).sqrt()
    return (gap / sum(w.pow(2).sum() for w in whole).sqrt()).item()


# ----------------------------------------------------------------------------------------------
# Several seeds at once (bnlib.stacked): the same loops, with a seed dimension in front


def _in_step(epochs: Sequence[Callable[[], Iterator]]) -> Iterator[list]:
    """One item of each epoch at every step, each epoch started again (``epochs[i]()``) when it
    runs out, so that the iterator never ends."""
    iterators = [epoch() for epoch in epochs]
    while True:
        items = []
        for i, epoch in enumerate(epochs):
            item = next(iterators[i], None)
            if item is None:  # the end of an epoch: the next one
                iterators[i] = epoch()
                item = next(iterators[i], None)
                if item is None:
                    raise ValueError(
                        f"loader {i} yields no mini-batch: is it empty, or smaller than one "
                        "batch with drop_last=True?"
                    )
            items.append(item)
        yield items


def stacked_batches(loaders: Sequence[Iterable[tuple[Tensor, Tensor]]]) -> Iterator:
    """One mini-batch of each seed's loader at every step, stacked: (S, N, ...) inputs and
    (S, N) labels. A loader that runs out is restarted (a new epoch, as ``train_run``'s loop
    restarts its one loader), so the iterator never ends.

    Loaders of ``data.make_loader`` over the same X and y (one per seed, as ``train_seeds``
    builds them) are gathered with one indexing per step instead of two per seed and a stack:
    the same tensors, drawn from each seed's own generator as its loader would.

    Raises:
        ValueError: a loader yields no batch at all (the loop would never get a step).
    """
    first = loaders[0] if loaders else None
    if isinstance(first, Batches) and all(
        isinstance(loader, Batches) and loader.X is first.X and loader.y is first.y
        for loader in loaders
    ):
        rows = first.X.reshape(len(first.X), -1)  # (n, features): one row per example
        for indices in _in_step([loader.indices for loader in loaders]):
            index = torch.stack(indices)  # (S, N)
            chosen = index.flatten()
            inputs = rows.index_select(0, chosen).view(*index.shape, *first.X.shape[1:])
            yield inputs, first.y.index_select(0, chosen).view(index.shape)  # (S, N, ...), (S, N)
        return
    for batches in _in_step([lambda loader=loader: iter(loader) for loader in loaders]):
        yield torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches])


def train_stacked_steps(
    model: nn.Module,
    batches: Iterator[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    num_steps: int,
    on_step: Callable[[int, nn.Module, Tensor, Tensor], None] | None = None,
) -> list[bool]:
    """``num_steps`` steps of a stacked model (``bnlib.stacked.StackedMLP``): each seed's mean
    negative log-likelihood over its own mini-batch, summed, so each seed's weights get their
    own gradient. A seed whose loss becomes infinite or NaN diverges there: from that step on it
    takes no part in the loss, as a separate run would have stopped.

    Args:
        batches: (S, N, ...) inputs and (S, N) labels at each step (``stacked_batches``).
        on_step: called as ``on_step(step, model, losses, alive)`` after each step, with the
            (S,) losses of that step and the (S,) mask of the seeds still training.

    Returns:
        Whether each seed diverged.
    """
    device = next(model.parameters()).device
    alive = torch.ones(model.num_seeds, dtype=torch.bool)
    model.train()
    for step in range(1, num_steps + 1):
        xb, yb = next(batches)
        optimizer.zero_grad(set_to_none=True)
        log_probs = model(xb.to(device))  # (S, N, 10)
        losses = F.nll_loss(log_probs.flatten(0, 1), yb.to(device).flatten(), reduction="none")
        losses = losses.view(model.num_seeds, -1).mean(1)  # (S,) each seed's own mean
        alive &= torch.isfinite(losses.detach()).cpu()
        if not alive.any():
            break
        losses[alive.to(device)].sum().backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, model, losses.detach().cpu(), alive.clone())
    return (~alive).tolist()


@torch.no_grad()
def evaluate_stacked(
    model: nn.Module, X: Tensor, y: Tensor, batch_size: int = 1000, train_mode: bool = False
) -> tuple[list[float], list[float]]:
    """``evaluate`` for every seed of a stacked model on the same (X, y), in eval mode (or, with
    ``train_mode=True``, in training mode, as ``evaluate``): the mean negative log-likelihood and
    the accuracy of each seed, two lists of S numbers."""
    was_training = model.training
    model.train(train_mode)
    device = next(model.parameters()).device
    loss = torch.zeros(model.num_seeds, dtype=torch.float64)
    correct = torch.zeros(model.num_seeds, dtype=torch.long)
    for start in range(0, len(X), batch_size):
        xb, yb = X[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        log_probs = model(xb)  # (S, n, 10): the same images for every seed
        target = yb.expand(model.num_seeds, -1)
        nll = F.nll_loss(log_probs.flatten(0, 1), target.flatten(), reduction="none")
        loss += nll.view(model.num_seeds, -1).sum(1).double().cpu()
        correct += (log_probs.argmax(-1) == target).sum(1).cpu()
    model.train(was_training)
    return (loss / len(X)).tolist(), (correct.double() / len(X)).tolist()


@torch.no_grad()
def predict_stacked(model: nn.Module, X: Tensor, batch_size: int = 1000) -> Tensor:
    """Predicted classes of every seed of a stacked model, (S, N), in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = [
        model(X[i : i + batch_size].to(device)).argmax(-1).cpu()
        for i in range(0, len(X), batch_size)
    ]
    model.train(was_training)
    return torch.cat(chunks, dim=1)
