"""What a trained ``PaperMLP`` looks like inside: the norms of its weight rows, its dead units.

Batch norm makes each unit's output blind to the norm of the weight row ``w_i`` in front of it,
so what a step of SGD does to that unit depends on ``eta / ||w_i||^2``: ``row_norms`` before and
after training say how much that effective rate fell. ``dead_units`` tells apart a network that
stopped moving because it converged from one whose ReLUs all went silent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlib.models import PaperMLP

__all__ = ["row_norms", "row_angles", "row_watch", "gradient_norms", "dead_units"]


def row_norms(model: PaperMLP) -> list[Tensor]:
    """The l2 norm of every weight row ``w_i`` (one per unit) of each hidden linear layer:
    a list of ``depth`` tensors of shape (hidden,)."""
    if not isinstance(model, PaperMLP):
        raise TypeError(f"row_norms takes a PaperMLP, got {type(model).__name__}")
    return [linear.weight.detach().norm(dim=1) for linear in model.linears]


def row_angles(before: Tensor, after: Tensor) -> Tensor:
    """The angle, in radians, by which each weight row turned between two copies of a layer's
    weight, (..., out, in) each: (..., out). Computed from the part of ``after`` orthogonal to
    ``before`` (in float64), accurate for the small angles of one step, where ``arccos`` of a
    cosine near 1 is not."""
    if before.shape != after.shape:
        raise ValueError(f"two copies of one weight needed, got {before.shape} and {after.shape}")
    before, after = before.double(), after.double()
    unit = before / before.norm(dim=-1, keepdim=True)
    along = (after * unit).sum(-1)
    across = (after - along.unsqueeze(-1) * unit).norm(dim=-1)
    return torch.atan2(across, along)


def row_watch(linears: list[nn.Module], previous: list[Tensor] | None) -> dict[str, list]:
    """What ``RunConfig(watch_rows=True)`` records of the hidden linear layers ``linears`` (a
    ``PaperMLP``'s, or a ``StackedMLP``'s with weights (S, out, in)): for each seed and layer,
    the median over the rows of the row norm ``||w_i||``, and the root mean square over the rows
    of the angle each row turned by since ``previous`` (the weights one step earlier; None: no
    angle). The mean square is what the equilibrium of weight decay predicts (``2 * lr * wd``
    for plain SGD).

    Returns:
        ``{"row_norm": [[per layer] per seed], "row_angle": [[per layer] per seed] or None}``.
    """
    weights = [m.weight.detach() for m in linears]
    weights = [w if w.dim() == 3 else w.unsqueeze(0) for w in weights]  # (S, out, in)
    norms = torch.stack([w.norm(dim=-1).median(dim=-1).values for w in weights], dim=1)
    angles = None
    if previous is not None:
        previous = [w if w.dim() == 3 else w.unsqueeze(0) for w in previous]
        pairs = zip(previous, weights, strict=True)
        rms = [row_angles(a, b).pow(2).mean(dim=-1).sqrt() for a, b in pairs]
        angles = torch.stack(rms, dim=1).tolist()
    return {"row_norm": norms.tolist(), "row_angle": angles}


def gradient_norms(model: PaperMLP, x: Tensor, y: Tensor) -> list[float]:
    """The norm of the gradient of the mean negative log-likelihood on ``(x, y)`` with respect to
    each hidden linear layer's weight, first layer first, in training mode (batch statistics),
    as at a step of training (the running statistics take the batch in, as there). The model's
    parameter gradients and its mode are left as they were."""
    if not isinstance(model, PaperMLP):
        raise TypeError(f"gradient_norms takes a PaperMLP, got {type(model).__name__}")
    was_training = model.training
    model.train()
    weights = [linear.weight for linear in model.linears]
    grads = torch.autograd.grad(F.nll_loss(model(x), y), weights)
    model.train(was_training)
    return [g.norm().item() for g in grads]


@torch.no_grad()
def dead_units(model: PaperMLP, X: Tensor, batch_size: int = 1000) -> list[Tensor]:
    """Which ReLUs of each hidden layer output zero for every image of ``X``, as inference
    computes it (eval mode: batch norm's running statistics): a list of ``depth`` boolean
    tensors of shape (hidden,). The model's mode is restored.

    Raises:
        ValueError: the network's nonlinearity is not a ReLU (a sigmoid is never exactly 0), or
            ``X`` holds no image.
    """
    if not isinstance(model, PaperMLP):
        raise TypeError(f"dead_units takes a PaperMLP, got {type(model).__name__}")
    if model.activation != "relu" or model.norm_after_activation:
        raise ValueError(
            "dead_units needs ReLUs fed by the normalisation (norm_after_activation=False), "
            f"got activation={model.activation!r}, norm_after_activation="
            f"{model.norm_after_activation}"
        )
    if len(X) == 0:
        raise ValueError("dead_units needs at least one image")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    alive = None
    for start in range(0, len(X), batch_size):
        inputs = model.pre_activations(X[start : start + batch_size].to(device))  # (n, hidden)
        active = [(z > 0).any(0).cpu() for z in inputs]
        alive = active if alive is None else [a | b for a, b in zip(alive, active, strict=True)]
    model.train(was_training)
    return [~a for a in alive]
