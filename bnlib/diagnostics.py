"""What a trained ``PaperMLP`` looks like inside: the norms of its weight rows, its dead units.

Batch norm makes each unit's output blind to the norm of the weight row ``w_i`` in front of it,
so what a step of SGD does to that unit depends on ``eta / ||w_i||^2``: ``row_norms`` before and
after training say how much that effective rate fell. ``dead_units`` tells apart a network that
stopped moving because it converged from one whose ReLUs all went silent.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlib.models import PaperMLP

__all__ = ["row_norms", "dead_units"]


def row_norms(model: PaperMLP) -> list[Tensor]:
    """The l2 norm of every weight row ``w_i`` (one per unit) of each hidden linear layer:
    a list of ``depth`` tensors of shape (hidden,)."""
    if not isinstance(model, PaperMLP):
        raise TypeError(f"row_norms takes a PaperMLP, got {type(model).__name__}")
    return [linear.weight.detach().norm(dim=1) for linear in model.linears]


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
