"""Experiments: a configuration in, a history (plain numbers) out. Nothing is drawn here."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch

from bnlib.data import load_tensors, make_loader
from bnlib.models import PaperMLP
from bnlib.training import evaluate, set_seed, train_steps

__all__ = ["DriftConfig", "activation_drift"]


@dataclass(frozen=True)
class DriftConfig:
    """How to watch the input of one sigmoid of the paper's MLP move during training."""

    norm: str | None = None  # None, "torch" or "bnlib"
    dataset: str = "fashion-mnist"
    num_steps: int = 600
    record_every: int = 20
    batch_size: int = 60  # the paper's mini-batch size
    lr: float = 0.5  # plain SGD; the paper does not give its optimiser settings
    layer: int = -1  # the last hidden layer, as in the paper's Figure 1
    unit: int = 0  # which of its sigmoids
    probe_size: int = 1000  # fixed test images on which the distribution is measured
    train_limit: int | None = 20000
    seed: int = 0


def activation_drift(config: DriftConfig) -> dict:
    """Train the paper's MLP and record, every ``record_every`` steps, the 15th, 50th and 85th
    percentiles of one sigmoid's input over a fixed probe batch, plus the test accuracy.

    Returns:
        ``{"config": dict, "step": [...], "percentiles": [[p15, p50, p85], ...],
        "layer_mean": [...], "layer_std": [...], "test_accuracy": [...]}``
    """
    set_seed(config.seed)
    X, y = load_tensors(config.dataset, train=True, limit=config.train_limit)
    X_test, y_test = load_tensors(config.dataset, train=False)
    probe = X_test[: config.probe_size]
    model = PaperMLP(norm=config.norm)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    quantiles = torch.tensor([0.15, 0.50, 0.85])
    history = {k: [] for k in ("step", "percentiles", "layer_mean", "layer_std", "test_accuracy")}

    def record(step, model, _loss):
        if step % config.record_every and step != 0:
            return
        # Measure the network as training computes it (batch statistics of the probe batch), on a
        # copy so the probe leaves the running statistics untouched.
        with torch.no_grad():
            z = copy.deepcopy(model).pre_activations(probe)[config.layer]  # (probe_size, hidden)
        history["step"].append(step)
        history["percentiles"].append(torch.quantile(z[:, config.unit], quantiles).tolist())
        history["layer_mean"].append(z.mean().item())
        history["layer_std"].append(z.std().item())
        history["test_accuracy"].append(evaluate(model, X_test, y_test)[1])

    record(0, model, None)
    loader = make_loader(X, y, config.batch_size, seed=config.seed)
    train_steps(model, loader, optimizer, config.num_steps, on_step=record)
    return {"config": asdict(config), **history}
