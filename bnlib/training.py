"""Training and evaluation loops. They return numbers; they draw and print nothing."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["set_seed", "default_device", "evaluate", "train_steps"]


def set_seed(seed: int) -> None:
    """Seed Python's and PyTorch's generators, so a run can be repeated exactly."""
    random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def evaluate(model: nn.Module, X: Tensor, y: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """Mean negative log-likelihood and accuracy of ``model`` (in eval mode) on (X, y).

    The model's mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss, correct = 0.0, 0
    for start in range(0, len(X), batch_size):
        xb, yb = X[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        log_probs = model(xb)
        loss += F.nll_loss(log_probs, yb, reduction="sum").item()
        correct += (log_probs.argmax(1) == yb).sum().item()
    model.train(was_training)
    return loss / len(X), correct / len(X)


def train_steps(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    num_steps: int,
    on_step: Callable[[int, nn.Module, float], None] | None = None,
) -> list[float]:
    """Run ``num_steps`` optimisation steps on the negative log-likelihood.

    Args:
        batches: an iterable of (inputs, labels), restarted as often as needed (a DataLoader).
        on_step: called as ``on_step(step, model, loss)`` after each step, to record anything.

    Returns:
        The training loss of every step.
    """
    device = next(model.parameters()).device
    model.train()
    losses: list[float] = []
    while len(losses) < num_steps:
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
    return losses
