"""Experiments: a configuration in, a history (plain numbers) out. Nothing is drawn here.

``run(config)`` trains once and caches the history on disk, keyed by the configuration and by
the source of bnlib itself, so the French and English twins of a chapter train once per build,
a rebuild costs seconds, and a change to the library can never serve a stale result.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import joblib
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bnlib.benchmark import BenchmarkConfig, StepTimeConfig, benchmark, training_step_times
from bnlib.data import load_tensors, make_loader
from bnlib.distributed import SyncBatchNorm, spawn
from bnlib.models import ArticleCNN, DistributionShift, PaperMLP, scale_init
from bnlib.training import default_device, evaluate, predict, set_seed, train_steps

__all__ = [
    "DriftConfig",
    "activation_drift",
    "RunConfig",
    "train_run",
    "trained_model",
    "NoiseConfig",
    "batch_noise",
    "DDPConfig",
    "ddp_train",
    "ddp_worker",
    "run",
    "run_all",
]


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


# ----------------------------------------------------------------------------------------------
# One training run


@dataclass(frozen=True)
class RunConfig:
    """One seeded training run. The defaults are the paper's MLP on Fashion-MNIST."""

    model: str = "mlp"  # "mlp" (PaperMLP) or "cnn" (ArticleCNN)
    norm: str | None = None  # None, "torch", "bnlib", "layer" or "group"
    norm_after_activation: bool = False  # mlp only
    activation: str = "sigmoid"  # mlp only
    depth: int = 3  # mlp only
    dropout: float = 0.0
    shift: tuple[float, float] | None = None  # (max_shift, max_scale) of a DistributionShift
    init_gain: float | None = None  # None: PyTorch's default initialisation, else scale_init
    dataset: str = "fashion-mnist"
    train_limit: int | None = 20000  # the first training images used
    batch_size: int = 60
    lr: float = 0.1  # SGD
    sgd_momentum: float = 0.0  # 0: plain SGD
    num_steps: int = 1000
    eval_every: int = 50
    eval_train_size: int = 5000  # training images on which training accuracy is measured
    eval_test_size: int | None = None  # test images measured at each record; None: all
    seed: int = 0
    keep_state: bool = False  # return the trained weights too, under "state_dict"
    predict_test: bool = False  # return the predicted classes of the whole test set too


def build_model(config: RunConfig) -> torch.nn.Module:
    """The network a configuration describes, initialised from its seed."""
    set_seed(config.seed)
    if config.model == "cnn":
        model = ArticleCNN(norm=config.norm, dropout=config.dropout)
    elif config.model == "mlp":
        shift = DistributionShift(*config.shift) if config.shift else None
        model = PaperMLP(
            config.norm,
            depth=config.depth,
            activation=config.activation,
            dropout=config.dropout,
            shift=shift,
            norm_after_activation=config.norm_after_activation,
        )
    else:
        raise ValueError(f"model must be 'mlp' or 'cnn', got {config.model!r}")
    if config.init_gain is not None:
        scale_init(model, config.init_gain)
    return model


def train_run(config: RunConfig) -> dict:
    """Train with plain SGD and record, every ``eval_every`` steps, losses and accuracies.

    Returns:
        ``{"config": dict, "step": [...], "train_loss": [...], "test_loss": [...],
        "test_accuracy": [...], "train_accuracy": [...], "diverged": bool}``, plus
        ``"state_dict"`` with ``keep_state`` and ``"test_predictions"`` (N,) with
        ``predict_test``, both cached with the rest. Training runs on the GPU when there is one.
        ``train_loss`` is the mean loss of the mini-batches since the previous record, as
        training computes it (None at step 0);
        the accuracies are measured in eval mode. A run whose loss becomes infinite or NaN stops
        there with ``diverged=True``.
    """
    X, y = load_tensors(config.dataset, train=True, limit=config.train_limit)
    X_test, y_test = load_tensors(config.dataset, train=False, limit=config.eval_test_size)
    X_seen, y_seen = X[: config.eval_train_size], y[: config.eval_train_size]
    model = build_model(config)
    device = default_device()
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.sgd_momentum)
    history = {k: [] for k in ("step", "train_loss", "test_loss", "test_accuracy")}
    history |= {"train_accuracy": [], "diverged": False}
    window: list[float] = []

    def record(step: int) -> None:
        test_loss, test_accuracy = evaluate(model, X_test, y_test)
        history["step"].append(step)
        history["train_loss"].append(sum(window) / len(window) if window else None)
        history["test_loss"].append(test_loss)
        history["test_accuracy"].append(test_accuracy)
        history["train_accuracy"].append(evaluate(model, X_seen, y_seen)[1])
        window.clear()

    record(0)
    loader = make_loader(X, y, config.batch_size, seed=config.seed)
    model.train()
    step = 0
    while step < config.num_steps and not history["diverged"]:
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.nll_loss(model(xb.to(device)), yb.to(device))
            if not torch.isfinite(loss):
                history["diverged"] = True
                break
            loss.backward()
            optimizer.step()
            step += 1
            window.append(loss.item())
            if step % config.eval_every == 0:
                record(step)
            if step == config.num_steps:
                break
    if config.keep_state:
        history["state_dict"] = {k: v.cpu() for k, v in model.state_dict().items()}
    if config.predict_test:
        history["test_predictions"] = predict(model, load_tensors(config.dataset, False)[0])
    return {"config": asdict(config), **history}


def trained_model(history: dict) -> torch.nn.Module:
    """The network of a ``train_run(RunConfig(..., keep_state=True))`` history, in eval mode."""
    if "state_dict" not in history:
        raise ValueError("this history kept no weights: run it with RunConfig(keep_state=True)")
    model = build_model(RunConfig(**history["config"]))
    model.load_state_dict(history["state_dict"])
    return model.eval()


# ----------------------------------------------------------------------------------------------
# The cache


# The modules whose code decides what an experiment computes (not how figures look).
_COMPUTING_MODULES = (
    "functional",
    "fast",
    "modules",
    "models",
    "data",
    "training",
    "distributed",
    "experiments",
    "benchmark",
)


def _source_fingerprint() -> str:
    """A hash of the code experiments run: results of another version are never reused."""
    digest = hashlib.sha256()
    for name in _COMPUTING_MODULES:
        digest.update((Path(__file__).parent / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


@contextmanager
def _threads(count: int):
    """Run with ``count`` CPU threads: the order of floating-point sums depends on the thread
    count, and a run at the edge of stability can diverge with one and not the other."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cache_dir() -> Path:
    """``$BNLIB_CACHE``; else ``_build/bnlib-cache`` in the book's checkout (``make clean`` empties
    it); else ``~/.cache/bnlib``."""
    if os.environ.get("BNLIB_CACHE"):
        return Path(os.environ["BNLIB_CACHE"])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "_config.yml").is_file():
        return checkout / "_build" / "bnlib-cache"
    return Path.home() / ".cache" / "bnlib"


# ----------------------------------------------------------------------------------------------
# Data-parallel training on several processes


@dataclass(frozen=True)
class DDPConfig:
    """The article's CNN trained with DistributedDataParallel on CPU processes (gloo)."""

    world_size: int = 2
    sync: bool = False  # bnlib.SyncBatchNorm, or each process normalises with its own slice
    per_process_batch: int = 4
    model: str = "cnn"
    dataset: str = "fashion-mnist"
    train_limit: int | None = 20000
    lr: float = 0.02
    sgd_momentum: float = 0.9
    num_steps: int = 300
    eval_every: int = 100
    eval_test_size: int | None = 2000
    seed: int = 0


def ddp_worker(rank: int, world_size: int, config: DDPConfig) -> dict:
    """One process of data-parallel training (``ddp_train``, or a script under ``torchrun``): its
    slice of every global mini-batch, the same model. The process group must be initialised."""
    X, y = load_tensors(config.dataset, train=True, limit=config.train_limit)
    model = build_model(RunConfig(model=config.model, norm="bnlib", seed=config.seed))
    if config.sync:
        model = SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=config.lr, momentum=config.sgd_momentum)
    generator = torch.Generator().manual_seed(config.seed)  # the same on every process
    global_batch = world_size * config.per_process_batch
    history = {"step": [], "train_loss": [], "test_accuracy": []}
    window = []
    for step in range(1, config.num_steps + 1):
        index = torch.randint(len(X), (global_batch,), generator=generator)
        mine = index[rank * config.per_process_batch : (rank + 1) * config.per_process_batch]
        optimizer.zero_grad(set_to_none=True)
        loss = F.nll_loss(ddp(X[mine]), y[mine])
        loss.backward()  # DDP averages the gradients over the processes
        optimizer.step()
        mean_loss = loss.detach().clone()
        torch.distributed.all_reduce(mean_loss)
        window.append(mean_loss.item() / world_size)
        if step % config.eval_every == 0:
            history["step"].append(step)
            history["train_loss"].append(sum(window) / len(window))
            history["test_accuracy"].append(_shared_test_accuracy(model, rank, world_size, config))
            window.clear()
    return history


def _shared_test_accuracy(model: torch.nn.Module, rank: int, world_size: int, config) -> float:
    """Test accuracy of process 0's model, the work split over the processes: each takes every
    ``world_size``-th test image, with process 0's running statistics (each process updated its
    own copy with its slice since DDP last broadcast them)."""
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)
    X_test, y_test = load_tensors(config.dataset, train=False, limit=config.eval_test_size)
    mine = slice(rank, None, world_size)
    correct = (predict(model, X_test[mine]) == y_test[mine]).sum()
    torch.distributed.all_reduce(correct)
    return correct.item() / len(y_test)


def ddp_train(config: DDPConfig) -> dict:
    """Train on ``world_size`` processes, each with ``per_process_batch`` images of every global
    mini-batch, with per-process or synchronised batch norm.

    Returns:
        ``{"config": dict, "step": [...], "train_loss": [...], "test_accuracy": [...]}``,
        measured by process 0 (the model is the same on every process).
    """
    history = spawn(ddp_worker, config.world_size, config)[0]
    return {"config": asdict(config), **history}


# ----------------------------------------------------------------------------------------------
# The noise a mini-batch adds


@dataclass(frozen=True)
class NoiseConfig:
    """How much the output of batch norm for one image depends on the rest of its mini-batch."""

    batch_sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128, 256)
    draws: int = 200  # random mini-batches per size
    dataset: str = "fashion-mnist"
    train_limit: int = 20000
    seed: int = 0


def batch_noise(config: NoiseConfig) -> dict:
    """Put one fixed image in ``draws`` random mini-batches of each size and measure, at the
    first batch norm of the paper's MLP (at initialisation, training mode), the standard deviation
    of that image's normalised features across mini-batches, averaged over the 100 features.

    Returns:
        ``{"config": dict, "batch_size": [...], "noise_std": [...]}``.
    """
    X, _ = load_tensors(config.dataset, train=True, limit=config.train_limit)
    model = build_model(RunConfig(norm="bnlib", seed=config.seed))
    linear, norm = model.linears[0], model.norms[0]
    generator = torch.Generator().manual_seed(config.seed)
    image, others = X[:1], X[1:]
    noise_std = []
    with torch.no_grad():
        for size in config.batch_sizes:
            outputs = []
            for _ in range(config.draws):
                index = torch.randint(len(others), (size - 1,), generator=generator)
                batch = torch.cat([image, others[index]])  # (size, 1, 28, 28)
                outputs.append(norm(linear(batch.flatten(1)))[0])  # (100,) the fixed image
            noise_std.append(torch.stack(outputs).std(0).mean().item())
    return {
        "config": asdict(config),
        "batch_size": list(config.batch_sizes),
        "noise_std": noise_std,
    }


# ----------------------------------------------------------------------------------------------
# The cache

EXPERIMENTS = {
    RunConfig: train_run,
    DriftConfig: activation_drift,
    NoiseConfig: batch_noise,
    DDPConfig: ddp_train,
    # measurements too: taken once per build, so both twins of a page quote the same ones
    BenchmarkConfig: benchmark,
    StepTimeConfig: training_step_times,
}


THREADS = 2  # every cached experiment runs with this many CPU threads, whatever the machine


def _with_fixed_threads(experiment):
    @functools.wraps(experiment)
    def wrapped(config):
        with _threads(THREADS):
            return experiment(config)

    return wrapped


@functools.cache
def _cached(experiment):
    memory = joblib.Memory(cache_dir() / _source_fingerprint(), verbose=0)
    return memory.cache(_with_fixed_threads(experiment))


def run(config):
    """Run the experiment a configuration describes (a key of ``EXPERIMENTS``), once: later
    calls, from this page, its twin or a later build, read the disk cache."""
    if type(config) not in EXPERIMENTS:
        raise TypeError(f"no experiment takes a {type(config).__name__}")
    return _cached(EXPERIMENTS[type(config)])(config)


def run_all(configs: Sequence, desc: str = "runs", progress: bool = True) -> list[dict]:
    """``run`` on each configuration in turn, with a text progress bar (no notebook widget)."""
    bar = tqdm(configs, desc=desc, file=sys.stderr, ascii=True, disable=not progress, ncols=80)
    return [run(config) for config in bar]
