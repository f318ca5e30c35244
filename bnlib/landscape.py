"""The loss landscape along the gradient, measured as Santurkar et al. (2018, section 3.1) do.

At points along training, from the current weights ``w`` and on the current mini-batch, we step
along the gradient ``g`` by each of a range of step sizes ``eta`` and record:

- the loss ``L(w - eta g)`` at each step; its variation over the steps (largest minus smallest)
  is what the paper plots as the "loss landscape";
- the change of the gradient, ``||grad L(w - eta g) - grad L(w)||``; its largest value over the
  steps is the paper's "gradient predictiveness" (small: the gradient computed here is still a
  good guide a step further);
- that change divided by the distance moved, ``||eta g||``; its largest value is the paper's
  "effective beta-smoothness".

The loss is the one training computes (training mode: batch norm uses the mini-batch's
statistics). Several seeds are measured at once, as one ``StackedMLP``: the summed loss gives
each seed's weights its own gradient, and every norm is taken per seed (every parameter of a
``StackedMLP`` stores its seeds one after the other along its first dimension, batch norm's
``S * D`` channels included).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from bnlib.data import load_tensors, make_loader
from bnlib.models import PaperMLP
from bnlib.seeds import set_seed
from bnlib.stacked import StackedMLP
from bnlib.training import default_device, evaluate_stacked, stacked_batches, train_stacked_steps

__all__ = ["LandscapeConfig", "along_gradient", "loss_landscape", "landscape_seeds"]

MEASURES = ("loss", "grad_norm", "loss_range", "grad_change", "smoothness")


@dataclass(frozen=True)
class LandscapeConfig:
    """The paper's MLP trained with plain SGD, its landscape measured along the way."""

    norm: str | None = None  # None, "torch" or "bnlib"
    activation: str = "relu"
    depth: int = 3
    dataset: str = "fashion-mnist"
    train_limit: int | None = 20000
    batch_size: int = 60
    lr: float = 0.1  # the training's learning rate
    num_steps: int = 500
    measure_every: int = 50  # measured before the updates 0, measure_every, ...
    step_sizes: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)  # the steps along the gradient
    eval_test_size: int | None = 2000  # test images of the final accuracy
    seed: int = 0


def _per_seed_norm(tensors: Sequence[Tensor], num_seeds: int) -> Tensor:
    """The l2 norm of each seed's part of a list of stacked tensors, (S,)."""
    return torch.sqrt(sum(t.reshape(num_seeds, -1).pow(2).sum(1) for t in tensors))


def _losses_and_gradients(
    model: StackedMLP, xb: Tensor, yb: Tensor
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Each seed's mean loss on its own mini-batch, (S,), and the gradient of their sum."""
    log_probs = model(xb)  # (S, N, 10)
    losses = F.nll_loss(log_probs.flatten(0, 1), yb.flatten(), reduction="none")
    losses = losses.view(model.num_seeds, -1).mean(1)  # (S,)
    gradients = torch.autograd.grad(losses.sum(), list(model.parameters()))
    return losses.detach(), gradients


def along_gradient(
    model: StackedMLP, xb: Tensor, yb: Tensor, step_sizes: Sequence[float]
) -> dict[str, Tensor]:
    """Step from ``model``'s weights along each seed's gradient on (xb, yb), by each step size.

    The model itself is left untouched (the steps are taken on a copy, whose batch norms may
    update their running statistics as they like).

    Args:
        model: a ``StackedMLP`` (a single ``PaperMLP``: wrap it, ``StackedMLP([model])``).
        xb: (S, N, ...) each seed's mini-batch; yb: (S, N) its labels.
        step_sizes: the values of ``eta``, all positive.

    Returns:
        (S,) tensors: ``loss`` and ``grad_norm`` at the weights themselves, ``loss_range`` (the
        largest minus the smallest ``L(w - eta g)`` over the steps), ``grad_change`` (the largest
        ``||grad L(w - eta g) - g||``) and ``smoothness`` (the largest ratio of that change to
        ``||eta g||``).

    Raises:
        ValueError: no step size, or one that is not positive; a model without seeds.
    """
    if not step_sizes or min(step_sizes) <= 0:
        raise ValueError(f"step_sizes must be positive, and at least one, got {step_sizes}")
    if not isinstance(model, StackedMLP):
        raise ValueError(
            f"along_gradient takes a StackedMLP, got {type(model).__name__}: "
            "wrap a single network as StackedMLP([model])"
        )
    probe = copy.deepcopy(model).train()
    device = next(probe.parameters()).device
    xb, yb = xb.to(device), yb.to(device)
    params = list(probe.parameters())
    start = [p.detach().clone() for p in params]
    S = probe.num_seeds
    loss, gradient = _losses_and_gradients(probe, xb, yb)
    grad_norm = _per_seed_norm(gradient, S)
    losses, changes = [], []
    for eta in step_sizes:
        with torch.no_grad():
            for p, p0, g in zip(params, start, gradient, strict=True):
                p.copy_(p0 - eta * g)
        stepped, new_gradient = _losses_and_gradients(probe, xb, yb)
        losses.append(stepped)
        change = [a - b for a, b in zip(new_gradient, gradient, strict=True)]
        changes.append(_per_seed_norm(change, S))
    losses, changes = torch.stack(losses), torch.stack(changes)  # (steps, S)
    etas = torch.tensor(step_sizes, dtype=grad_norm.dtype, device=device)
    distances = etas.unsqueeze(1) * grad_norm  # (steps, S): ||eta g||
    return {
        "loss": loss,
        "grad_norm": grad_norm,
        "loss_range": losses.max(0).values - losses.min(0).values,
        "grad_change": changes.max(0).values,
        "smoothness": (changes / distances).max(0).values,
    }


def landscape_seeds(config: LandscapeConfig, seeds: Sequence[int]) -> list[dict]:
    """Train the paper's MLP for each of ``seeds`` (at once, stacked) and measure the landscape
    along the gradient every ``measure_every`` steps, on the mini-batch of the next update.

    Each seed starts from the weights and sees the mini-batches of ``RunConfig`` with that seed
    (same norm, activation and depth), so a run with and one without batch norm are paired.

    Returns:
        One history per seed: ``{"config": dict, "step": [...], "loss": [...],
        "grad_norm": [...], "loss_range": [...], "grad_change": [...], "smoothness": [...],
        "test_accuracy": float, "diverged": bool}``, ``step`` the number of updates done before
        each measurement, ``test_accuracy`` at the end on the first ``eval_test_size`` test
        images.
    """
    configs = [replace(config, seed=s) for s in seeds]
    X, y = load_tensors(config.dataset, train=True, limit=config.train_limit)
    X_test, y_test = load_tensors(config.dataset, train=False, limit=config.eval_test_size)
    models = []
    for c in configs:
        set_seed(c.seed)  # as bnlib.experiments.build_model: the same initial weights
        models.append(PaperMLP(c.norm, depth=c.depth, activation=c.activation))
    model = StackedMLP(models).to(default_device())
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    histories = [{"config": asdict(c), "step": [], **{k: [] for k in MEASURES}} for c in configs]
    loaders = [make_loader(X, y, config.batch_size, seed=c.seed) for c in configs]

    def measured(batches):
        """The same mini-batches, measured before every ``measure_every``-th update."""
        for step, (xb, yb) in enumerate(batches):
            if step % config.measure_every == 0 and step < config.num_steps:
                measures = along_gradient(model, xb, yb, config.step_sizes)
                for s, history in enumerate(histories):
                    history["step"].append(step)
                    for key in MEASURES:
                        history[key].append(measures[key][s].item())  # a float
            yield xb, yb

    diverged = train_stacked_steps(
        model, measured(stacked_batches(loaders)), optimizer, config.num_steps
    )
    accuracy = evaluate_stacked(model, X_test, y_test)[1]
    for s, history in enumerate(histories):
        history["test_accuracy"] = accuracy[s]
        history["diverged"] = diverged[s]
    return histories


def loss_landscape(config: LandscapeConfig) -> dict:
    """``landscape_seeds`` for the one seed ``config.seed``."""
    return landscape_seeds(config, [config.seed])[0]
