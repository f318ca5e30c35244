"""Experiments: a configuration in, a history (plain numbers) out. Nothing is drawn here.

``run(config)`` trains once and caches the history on disk (``bnlib.cache``), keyed by the
configuration, the source of bnlib and the machine's numerics, so the French and English twins of
a chapter train once per build, a rebuild costs seconds, and a change to the library can never
serve a stale result. ``run(Seeds(config, n))`` runs a configuration over ``n`` seeds (the
paper's MLP all at once, as one stacked network): what a verdict about training rests on.
Every seed is shifted by ``BNLIB_SEED_OFFSET`` (``bnlib.seeds``).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from itertools import islice

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, update_bn
from tqdm import tqdm

from bnlib import cache
from bnlib.benchmark import BenchmarkConfig, StepTimeConfig, benchmark, training_step_times
from bnlib.cache import THREADS
from bnlib.data import load_tensors, make_loader
from bnlib.diagnostics import row_watch
from bnlib.distributed import (
    CollectivesConfig,
    ProofConfig,
    SyncBatchNorm,
    counted_collectives,
    proof,
    spawn,
)
from bnlib.landscape import LandscapeConfig, landscape_seeds, loss_landscape
from bnlib.models import ArticleCNN, DistributionShift, PaperMLP, scale_init
from bnlib.modules import GhostBatchNorm1d, is_batch_norm
from bnlib.residual import ResidualMLP, adaptive_gradient_clipping
from bnlib.seeds import seed_offset, set_seed
from bnlib.stacked import StackedGroupNorm, StackedMLP
from bnlib.training import (
    default_device,
    evaluate,
    evaluate_stacked,
    predict,
    predict_stacked,
    recalibrate,
    stacked_batches,
    train_stacked_steps,
    train_steps,
)

__all__ = [
    "DriftConfig",
    "activation_drift",
    "RunConfig",
    "build_model",
    "train_run",
    "trained_model",
    "NoiseConfig",
    "batch_noise",
    "DDPConfig",
    "LandscapeConfig",
    "ddp_train",
    "ddp_worker",
    "Seeds",
    "train_seeds",
    "drift_seeds",
    "ddp_train_seeds",
    "ddp_train_arms",
    "ReadingsConfig",
    "readings",
    "SWAConfig",
    "swa_run",
    "run",
    "run_all",
    "THREADS",
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
    eval_test_size: int | None = 2000  # test images of each record; the last: all of them
    seed: int = 0


@torch.no_grad()
def _inference_pre_activations(model: torch.nn.Module, x: torch.Tensor, layer: int):
    """The input of layer ``layer``'s nonlinearity for ``x``, in eval mode (running statistics,
    which this pass leaves untouched); the model's mode is restored."""
    was_training = model.training
    z = model.eval().pre_activations(x)[layer]  # (N, hidden), or (S, N, hidden) stacked
    model.train(was_training)
    return z


def activation_drift(config: DriftConfig) -> dict:
    """Train the paper's MLP and record, every ``record_every`` steps, the 15th, 50th and 85th
    percentiles of one sigmoid's input over a fixed probe of held-out images, plus the test
    accuracy.

    The probe is the first ``probe_size`` test images (never trained on), passed through the
    network as inference computes it (eval mode: batch norm uses its running statistics), as the
    paper's Figure 1 measures it. So with batch norm the percentiles are not pinned to ``beta``
    and ``gamma`` by construction, as they would be on the probe's own batch statistics: they
    show where the running statistics and the learned parameters put held-out images. The
    accuracy of each record is measured on the first ``eval_test_size`` test images, that of
    the last record (step ``num_steps``) on the whole test set.

    Returns:
        ``{"config": dict, "step": [...], "percentiles": [[p15, p50, p85], ...],
        "layer_mean": [...], "layer_std": [...], "test_accuracy": [...]}``
    """
    set_seed(config.seed)
    X, y = load_tensors(config.dataset, train=True, limit=config.train_limit)
    X_all, y_all = load_tensors(config.dataset, train=False)
    X_test, y_test = X_all[: config.eval_test_size], y_all[: config.eval_test_size]
    probe = X_all[: config.probe_size]
    model = PaperMLP(norm=config.norm)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    quantiles = torch.tensor([0.15, 0.50, 0.85])
    history = {k: [] for k in ("step", "percentiles", "layer_mean", "layer_std", "test_accuracy")}

    def record(step, model, _loss):
        if step % config.record_every and step != 0:
            return
        z = _inference_pre_activations(model, probe, config.layer)  # (probe_size, hidden)
        history["step"].append(step)
        history["percentiles"].append(torch.quantile(z[:, config.unit], quantiles).tolist())
        history["layer_mean"].append(z.mean().item())
        history["layer_std"].append(z.std().item())
        final = step == config.num_steps
        history["test_accuracy"].append(
            evaluate(model, *((X_all, y_all) if final else (X_test, y_test)))[1]
        )

    record(0, model, None)
    loader = make_loader(X, y, config.batch_size, seed=config.seed)
    train_steps(model, loader, optimizer, config.num_steps, on_step=record)
    return {"config": asdict(config), **history}


# ----------------------------------------------------------------------------------------------
# One training run


@dataclass(frozen=True)
class RunConfig:
    """One seeded training run. The defaults are the paper's MLP on Fashion-MNIST."""

    model: str = "mlp"  # "mlp" (PaperMLP), "cnn" (ArticleCNN) or "resmlp" (ResidualMLP)
    norm: str | None = None  # None, "torch", "bnlib", "layer" or "group"
    norm_after_activation: bool = False  # mlp only
    activation: str = "sigmoid"  # mlp only
    depth: int = 3  # mlp only
    dropout: float = 0.0
    shift: tuple[float, float] | None = None  # (max_shift, max_scale) of a DistributionShift
    shift_per_example: bool = False  # its noise i.i.d. per example (the paper's), else shared
    init_gain: float | None = None  # None: PyTorch's default initialisation, else scale_init
    bn_momentum: float | None = 0.1  # of every batch norm's running averages (None: cumulative)
    ghost_batch: int | None = None  # mlp with bnlib: statistics over ghost batches this large
    variant: str = "bn"  # resmlp only: what keeps its residual stream in check (residual.VARIANTS)
    blocks: int = 4  # resmlp only: residual blocks
    agc: float | None = None  # adaptive gradient clipping's factor (None: no clipping)
    dataset: str = "fashion-mnist"
    train_limit: int | None = 20000  # the first training images used
    batch_size: int = 60
    lr: float = 0.1  # SGD
    sgd_momentum: float = 0.0  # 0: plain SGD
    weight_decay: float = 0.0  # SGD's, on every weight...
    decay_norms: bool = True  # ...and on the normalisation layers' gamma and beta too
    num_steps: int = 1000
    eval_every: int = 50
    eval_train_size: int = 1000  # training images on which training accuracy is measured
    eval_test_size: int | None = 2000  # test images of each record (None: all)...
    final_test_size: int | None = None  # ...but the last one's (None: the whole test set)
    seed: int = 0
    watch_rows: bool = False  # mlp: record row norms and one-step angles too (row_watch)
    keep_state: bool = False  # return the trained weights too, under "state_dict"
    predict_test: bool = False  # return the predicted classes of the whole test set too


def build_model(config: RunConfig) -> torch.nn.Module:
    """The network a configuration describes, initialised from its seed."""
    set_seed(config.seed)
    if config.model == "cnn":
        model = ArticleCNN(norm=config.norm, dropout=config.dropout)
    elif config.model == "mlp":
        shift = (
            DistributionShift(*config.shift, per_example=config.shift_per_example)
            if config.shift
            else None
        )
        model = PaperMLP(
            config.norm,
            depth=config.depth,
            activation=config.activation,
            dropout=config.dropout,
            shift=shift,
            norm_after_activation=config.norm_after_activation,
        )
    elif config.model == "resmlp":
        model = ResidualMLP(config.variant, blocks=config.blocks, norm=config.norm)
    else:
        raise ValueError(f"model must be 'mlp', 'cnn' or 'resmlp', got {config.model!r}")
    if config.ghost_batch is not None:
        if config.model != "mlp" or config.norm != "bnlib":
            raise ValueError(
                "ghost_batch needs model='mlp' and norm='bnlib' (bnlib's GhostBatchNorm1d), got "
                f"model={config.model!r}, norm={config.norm!r}"
            )
        for i, layer in enumerate(model.norms):
            model.norms[i] = GhostBatchNorm1d(
                layer.num_features, layer.eps, virtual_batch_size=config.ghost_batch
            )
    if config.init_gain is not None:
        scale_init(model, config.init_gain)
    for module in model.modules():
        if is_batch_norm(module):
            module.momentum = config.bn_momentum
    return model


def make_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.SGD:
    """SGD with the configuration's learning rate, momentum and weight decay; with
    ``decay_norms=False``, the parameters of the normalisation layers (gamma and beta of batch,
    layer and group norm) are left out of the weight decay."""
    settings = {"lr": config.lr, "momentum": config.sgd_momentum}
    if config.decay_norms or config.weight_decay == 0:
        return torch.optim.SGD(model.parameters(), weight_decay=config.weight_decay, **settings)
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, StackedGroupNorm)
    exempt = {
        id(p)
        for m in model.modules()
        if is_batch_norm(m) or isinstance(m, norms)
        for p in m.parameters(recurse=False)
    }
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in exempt]},
        {"params": [p for p in model.parameters() if id(p) in exempt], "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, weight_decay=config.weight_decay, **settings)


def train_run(config: RunConfig) -> dict:
    """Train with plain SGD and record, every ``eval_every`` steps, losses and accuracies.

    Returns:
        ``{"config": dict, "step": [...], "train_loss": [...], "test_loss": [...],
        "test_accuracy": [...], "train_accuracy": [...], "diverged": bool}``, plus
        ``"state_dict"`` with ``keep_state``, ``"test_predictions"`` (N,) with
        ``predict_test``, and with ``watch_rows``, at every record, ``"row_norm"`` and
        ``"row_angle"`` (``diagnostics.row_watch``: per hidden layer, the median row norm and
        the root mean square angle the rows turned by in the step just taken, None at step 0),
        all cached with the rest. Training runs on the GPU when there is one.
        ``train_loss`` is the mean loss of the mini-batches since the previous record, as
        training computes it (None at step 0);
        the accuracies are measured in eval mode, on the first ``eval_test_size`` test images,
        except at the last record (step ``num_steps``): on the first ``final_test_size``, by
        default the whole test set (so are the predictions of ``predict_test``). A run whose loss
        becomes infinite or NaN stops there with ``diverged=True``.
    """
    X, y = load_tensors(config.dataset, train=True, limit=config.train_limit)
    X_all, y_all = load_tensors(config.dataset, train=False, limit=config.final_test_size)
    X_test, y_test = X_all[: config.eval_test_size], y_all[: config.eval_test_size]
    X_seen, y_seen = X[: config.eval_train_size], y[: config.eval_train_size]
    model = build_model(config)
    device = default_device()
    model = model.to(device)
    optimizer = make_optimizer(model, config)
    # the last linear layer of every model: adaptive clipping leaves it out, as Brock et al.
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    history = {k: [] for k in ("step", "train_loss", "test_loss", "test_accuracy")}
    history |= {"train_accuracy": [], "diverged": False}
    if config.watch_rows:
        history |= {"row_norm": [], "row_angle": []}
    window: list[float] = []
    previous = None  # the hidden layers' weights one step earlier, when watched

    def record(step: int) -> None:
        final = step == config.num_steps
        test_set = (X_all, y_all) if final else (X_test, y_test)
        test_loss, test_accuracy = evaluate(model, *test_set)
        history["step"].append(step)
        history["train_loss"].append(sum(window) / len(window) if window else None)
        history["test_loss"].append(test_loss)
        history["test_accuracy"].append(test_accuracy)
        history["train_accuracy"].append(evaluate(model, X_seen, y_seen)[1])
        if config.watch_rows:
            watched = row_watch(list(model.linears), previous)
            history["row_norm"].append(watched["row_norm"][0])
            history["row_angle"].append(watched["row_angle"] and watched["row_angle"][0])
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
            if config.agc is not None:
                adaptive_gradient_clipping(model, config.agc, skip=(classifier,))
            if config.watch_rows and (step + 1) % config.eval_every == 0:  # recorded next
                previous = [m.weight.detach().clone() for m in model.linears]
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
        history["test_predictions"] = predict(model, X_all)
    return {"config": asdict(config), **history}


def trained_model(history: dict) -> torch.nn.Module:
    """The network of a ``train_run(RunConfig(..., keep_state=True))`` history, in eval mode."""
    if "state_dict" not in history:
        raise ValueError("this history kept no weights: run it with RunConfig(keep_state=True)")
    model = build_model(RunConfig(**history["config"]))
    model.load_state_dict(history["state_dict"])
    return model.eval()


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


def ddp_worker(rank: int, world_size: int, config: DDPConfig, data=None) -> dict:
    """One process of data-parallel training (``ddp_train``, or a script under ``torchrun``): its
    slice of every global mini-batch, the same model. The process group must be initialised.
    ``data``: the training tensors ``(X, y)``, when already loaded."""
    X, y = data or load_tensors(config.dataset, train=True, limit=config.train_limit)
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


def ddp_seeds_worker(rank: int, world_size: int, arms: list[tuple[DDPConfig, list[int]]]) -> list:
    """``ddp_worker`` for each seed of each arm in turn, in the same processes: one list of
    histories per arm. Each training set is loaded once."""
    data = {}
    for config, _ in arms:
        where = (config.dataset, config.train_limit)
        if where not in data:
            data[where] = load_tensors(config.dataset, train=True, limit=config.train_limit)
    return [
        [
            ddp_worker(
                rank, world_size, replace(config, seed=s), data[config.dataset, config.train_limit]
            )
            for s in seeds
        ]
        for config, seeds in arms
    ]


def ddp_train_arms(arms: Sequence[tuple[DDPConfig, Sequence[int]]]) -> list[list[dict]]:
    """``ddp_train`` for each seed of each arm (``(config, seeds)``, all with one world size),
    the processes started once for all: the same histories as one ``ddp_train`` per seed,
    without paying the start-up (seconds) each time."""
    sizes = {config.world_size for config, _ in arms}
    if len(sizes) != 1:
        raise ValueError(f"the arms must share one world_size to share processes, got {sizes}")
    arms = [(config, list(seeds)) for config, seeds in arms]
    results = spawn(ddp_seeds_worker, sizes.pop(), arms)[0]  # process 0's
    return [
        [
            {"config": asdict(replace(config, seed=s)), **history}
            for s, history in zip(seeds, histories, strict=True)
        ]
        for (config, seeds), histories in zip(arms, results, strict=True)
    ]


def ddp_train_seeds(config: DDPConfig, seeds: Sequence[int]) -> list[dict]:
    """``ddp_train`` with each seed, the processes started once for all of them."""
    return ddp_train_arms([(config, seeds)])[0]


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
# Several seeds


def _seed_histories(configs: Sequence) -> list[dict]:
    """An empty ``train_run`` history for each seed's configuration."""
    empty = {k: [] for k in ("step", "train_loss", "test_loss", "test_accuracy", "train_accuracy")}
    return [{"config": asdict(c), **copy.deepcopy(empty), "diverged": False} for c in configs]


def train_seeds(config: RunConfig, seeds: Sequence[int]) -> list[dict]:
    """``train_run`` for each of ``seeds``, the paper's MLP trained once for all of them as a
    ``StackedMLP``: the same histories (to float rounding) at a fraction of the cost.

    Each seed has its own initial weights and mini-batches (those of ``train_run`` with that
    seed). Dropout masks and shifting noise are drawn for all seeds at once, so they differ from
    a separate run's, with the same distribution.
    """
    if config.model != "mlp":
        raise ValueError(f"only the MLP trains stacked, got model={config.model!r}: use train_run")
    configs = [replace(config, seed=s) for s in seeds]
    X, y = load_tensors(config.dataset, train=True, limit=config.train_limit)
    X_all, y_all = load_tensors(config.dataset, train=False, limit=config.final_test_size)
    X_test, y_test = X_all[: config.eval_test_size], y_all[: config.eval_test_size]
    X_seen, y_seen = X[: config.eval_train_size], y[: config.eval_train_size]
    device = default_device()
    model = StackedMLP([build_model(c) for c in configs]).to(device)
    optimizer = make_optimizer(model, config)
    histories = _seed_histories(configs)
    if config.watch_rows:
        for history in histories:
            history |= {"row_norm": [], "row_angle": []}
    windows: list[list[float]] = [[] for _ in seeds]
    alive = [True] * len(seeds)
    previous = None  # the hidden layers' weights one step before the next record, when watched

    def snapshot(step: int) -> None:
        nonlocal previous
        if config.watch_rows and (step + 1) % config.eval_every == 0:
            previous = [m.weight.detach().clone() for m in model.linears]

    def record(step: int) -> None:
        final = step == config.num_steps
        test_loss, test_acc = evaluate_stacked(
            model, *((X_all, y_all) if final else (X_test, y_test))
        )
        _, seen_acc = evaluate_stacked(model, X_seen, y_seen)
        watched = row_watch(list(model.linears), previous) if config.watch_rows else None
        for s, history in enumerate(histories):
            if not alive[s]:
                continue
            history["step"].append(step)
            history["train_loss"].append(sum(windows[s]) / len(windows[s]) if windows[s] else None)
            history["test_loss"].append(test_loss[s])
            history["test_accuracy"].append(test_acc[s])
            history["train_accuracy"].append(seen_acc[s])
            if watched is not None:
                history["row_norm"].append(watched["row_norm"][s])
                history["row_angle"].append(watched["row_angle"] and watched["row_angle"][s])
            windows[s].clear()

    def on_step(step: int, _model, losses, still) -> None:
        for s, (loss, ok) in enumerate(zip(losses.tolist(), still.tolist(), strict=True)):
            alive[s] = ok
            if ok:
                windows[s].append(loss)
        if step % config.eval_every == 0:
            record(step)
        snapshot(step)

    record(0)
    snapshot(0)
    batches = stacked_batches([make_loader(X, y, config.batch_size, seed=c.seed) for c in configs])
    diverged = train_stacked_steps(model, batches, optimizer, config.num_steps, on_step=on_step)
    predictions = predict_stacked(model, X_all) if config.predict_test else None
    for s, history in enumerate(histories):
        history["diverged"] = diverged[s]
        if config.keep_state:
            history["state_dict"] = {k: v.cpu() for k, v in model.unstack(s).items()}
        if predictions is not None:
            history["test_predictions"] = predictions[s]
    return histories


def drift_seeds(config: DriftConfig, seeds: Sequence[int]) -> list[dict]:
    """``activation_drift`` for each of ``seeds``, trained once for all as a ``StackedMLP``:
    the same histories (to float rounding), the probe measured in eval mode as there."""
    configs = [replace(config, seed=s) for s in seeds]
    X, y = load_tensors(config.dataset, train=True, limit=config.train_limit)
    X_all, y_all = load_tensors(config.dataset, train=False)
    X_test, y_test = X_all[: config.eval_test_size], y_all[: config.eval_test_size]
    probe = X_all[: config.probe_size]
    models = []
    for c in configs:
        set_seed(c.seed)
        models.append(PaperMLP(norm=config.norm))
    model = StackedMLP(models)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    quantiles = torch.tensor([0.15, 0.50, 0.85])
    keys = ("step", "percentiles", "layer_mean", "layer_std", "test_accuracy")
    histories = [{"config": asdict(c), **{k: [] for k in keys}} for c in configs]

    def record(step, model, *_):
        if step % config.record_every and step != 0:
            return
        z = _inference_pre_activations(model, probe, config.layer)  # (S, probe, hidden)
        final = step == config.num_steps
        accuracy = evaluate_stacked(model, *((X_all, y_all) if final else (X_test, y_test)))[1]
        for s, history in enumerate(histories):
            history["step"].append(step)
            history["percentiles"].append(torch.quantile(z[s, :, config.unit], quantiles).tolist())
            history["layer_mean"].append(z[s].mean().item())
            history["layer_std"].append(z[s].std().item())
            history["test_accuracy"].append(accuracy[s])

    record(0, model)
    batches = stacked_batches([make_loader(X, y, config.batch_size, seed=c.seed) for c in configs])
    train_stacked_steps(model, batches, optimizer, config.num_steps, on_step=record)
    return histories


@dataclass(frozen=True)
class Seeds:
    """A configuration run over ``n`` seeds: ``config.seed``, ``config.seed + 1``, ...

    ``run(Seeds(config, n))`` returns one history per seed, in seed order. Every seed shares
    the others' settings, so two ``Seeds`` that differ in one setting are paired arms: seed k of
    one starts from the same initial weights and sees the same mini-batches as seed k of the
    other (``bnlib.stats.paired`` compares them seed by seed).
    """

    config: RunConfig | DriftConfig | NoiseConfig | DDPConfig | LandscapeConfig
    n: int = 10

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"Seeds needs n >= 2 to measure a spread, got n={self.n}")
        if type(self.config) not in _ONE_RUN:
            raise TypeError(f"no experiment takes a {type(self.config).__name__} over seeds")

    @property
    def seeds(self) -> list[int]:
        return [self.config.seed + i for i in range(self.n)]


def run_seeds(experiment: Seeds) -> list[dict]:
    """The histories of ``experiment.config`` over its seeds; the paper's MLP runs stacked."""
    if experiment in _TRAINED_TOGETHER:  # trained by run_all with other arms, now cached
        return _TRAINED_TOGETHER.pop(experiment)
    config, seeds = experiment.config, experiment.seeds
    if isinstance(config, RunConfig) and config.model == "mlp":
        return train_seeds(config, seeds)
    if isinstance(config, DriftConfig):
        return drift_seeds(config, seeds)
    if isinstance(config, DDPConfig):
        return ddp_train_seeds(config, seeds)  # the processes start once for all the seeds
    if isinstance(config, LandscapeConfig):
        return landscape_seeds(config, seeds)
    return [_ONE_RUN[type(config)](replace(config, seed=s)) for s in seeds]


@dataclass(frozen=True)
class ReadingsConfig:
    """Trained networks read several ways, each on the first ``eval_size`` test images: with
    their running averages (eval mode); recalibrated with their final weights over training
    mini-batches of each size of ``recalibrated`` (``recal_images`` images each time); and with
    each test batch of each size of ``own_statistics`` normalised by its own statistics, as in
    training (a forgotten ``model.eval()``).

    ``trained`` is a ``Seeds`` of a ``RunConfig`` with ``keep_state=True``, run (or read from
    the cache) first; ``seed`` draws the recalibration mini-batches (the same for every
    network) and the dropout masks of the readings in training mode.

    The paper's MLPs are read all at once, as one ``StackedMLP`` (the same readings, to float
    rounding; dropout masks are then drawn for every network at once).
    """

    trained: Seeds
    eval_size: int | None = 2000
    recalibrated: tuple[int, ...] = ()
    recal_images: int = 2560
    own_statistics: tuple[int, ...] = ()
    seed: int = 1


def readings(config: ReadingsConfig) -> list[dict]:
    """One reading of each network of ``config.trained`` per way ``config`` lists, in seed order:
    ``{"running": accuracy, "recalibrated": {size: accuracy}, "own_statistics": {size:
    accuracy}}``, accuracies in [0, 1]. The networks themselves are left as trained."""
    if not isinstance(config.trained, Seeds) or not isinstance(config.trained.config, RunConfig):
        raise TypeError("ReadingsConfig.trained must be a Seeds of a RunConfig")
    if not config.trained.config.keep_state:
        raise ValueError("the trained networks kept no weights: use RunConfig(keep_state=True)")
    trained = config.trained.config
    X, y = load_tensors(trained.dataset, train=True, limit=trained.train_limit)  # as in training
    X_test, y_test = load_tensors(trained.dataset, train=False)
    X_test, y_test = X_test[: config.eval_size], y_test[: config.eval_size]
    if trained.model == "mlp":
        return _stacked_readings(config, run(config.trained), (X, y), (X_test, y_test))
    results = []
    for history in run(config.trained):
        net = trained_model(history)
        result = {"running": evaluate(net, X_test, y_test)[1], "recalibrated": {}}
        for size in config.recalibrated:
            batches = make_loader(X, y, size, seed=config.seed)
            fresh = recalibrate(copy.deepcopy(net), batches, config.recal_images // size)
            result["recalibrated"][size] = evaluate(fresh, X_test, y_test)[1]
        set_seed(config.seed)  # the dropout masks, if any
        result["own_statistics"] = {
            size: evaluate(copy.deepcopy(net), X_test, y_test, size, train_mode=True)[1]
            for size in config.own_statistics
        }
        results.append(result)
    return results


def _stacked_readings(config: ReadingsConfig, histories: list[dict], train, test) -> list[dict]:
    """``readings`` of trained MLPs, every seed at once: one pass of a ``StackedMLP`` reads all
    the networks (a small network on a CPU costs its per-operation overhead, whatever S)."""
    net = StackedMLP([trained_model(h) for h in histories])
    running = evaluate_stacked(net, *test)[1]
    recalibrated = {}
    for size in config.recalibrated:
        batches = make_loader(*train, size, seed=config.seed)  # the same for every network
        fresh = recalibrate(copy.deepcopy(net), batches, config.recal_images // size)
        recalibrated[size] = evaluate_stacked(fresh, *test)[1]
    set_seed(config.seed)  # the dropout masks, if any
    own = {
        size: evaluate_stacked(copy.deepcopy(net), *test, size, train_mode=True)[1]
        for size in config.own_statistics
    }
    return [
        {
            "running": running[s],
            "recalibrated": {size: values[s] for size, values in recalibrated.items()},
            "own_statistics": {size: values[s] for size, values in own.items()},
        }
        for s in range(len(histories))
    ]


@dataclass(frozen=True)
class SWAConfig:
    """One training run of ``run`` (its seed replaced by ``seed``) whose weights are averaged,
    as stochastic weight averaging does: the average starts from the weights of step ``start``
    and takes in those of every ``every``-th step after it, up to the last.
    ``torch.optim.swa_utils.AveragedModel`` averages the parameters only, and its copy keeps
    the running statistics of step ``start``."""

    run: RunConfig = RunConfig()
    start: int = 500
    every: int = 5
    recal_batches: int = 50  # update_bn's pass: this many training mini-batches...
    recal_size: int = 256  # ...of this many images
    seed: int = 0


def swa_run(config: SWAConfig) -> dict:
    """Test accuracies, in [0, 1], on the whole test set: ``"final"``, the network of the last
    step; then the averaged weights with three running statistics: ``"start_statistics"``, those
    the average's copy kept from step ``start``; ``"final_statistics"``, the last step's network's;
    ``"recomputed"``, computed for the averaged weights by ``update_bn``, which runs its pass
    with the whole network in training mode (dropout included: with dropout,
    ``training.recalibrate`` is the pass to use)."""
    train = replace(config.run, seed=config.seed)
    if not 0 < config.start <= train.num_steps or config.every < 1:
        raise ValueError(
            f"need 0 < start <= num_steps and every >= 1, got start={config.start}, "
            f"num_steps={train.num_steps}, every={config.every}"
        )
    X, y = load_tensors(train.dataset, train=True, limit=train.train_limit)
    X_test, y_test = load_tensors(train.dataset, train=False)
    model = build_model(train)
    optimizer = make_optimizer(model, train)
    averaged = {}

    def average(step: int, net: torch.nn.Module, _loss: float) -> None:
        if step == config.start:
            averaged["model"] = AveragedModel(net)  # a copy: these weights, these statistics
        elif step > config.start and (step - config.start) % config.every == 0:
            averaged["model"].update_parameters(net)

    batches = make_loader(X, y, train.batch_size, seed=train.seed)
    train_steps(model, batches, optimizer, train.num_steps, on_step=average)
    swa = averaged["model"].module
    with_final = copy.deepcopy(swa)
    for kept, last in zip(
        (m for m in with_final.modules() if is_batch_norm(m)),
        (m for m in model.modules() if is_batch_norm(m)),
        strict=True,
    ):
        kept.load_state_dict(last.state_dict())
    result = {
        "final": evaluate(model, X_test, y_test)[1],
        "start_statistics": evaluate(swa, X_test, y_test)[1],
        "final_statistics": evaluate(with_final, X_test, y_test)[1],
    }
    recal = make_loader(X, y, config.recal_size, seed=config.seed + 1)
    update_bn(islice(((xb,) for xb, _ in recal), config.recal_batches), swa)
    result["recomputed"] = evaluate(swa, X_test, y_test)[1]
    return result


# ----------------------------------------------------------------------------------------------
# Running an experiment, through the cache

_ONE_RUN = {
    RunConfig: train_run,
    DriftConfig: activation_drift,
    NoiseConfig: batch_noise,
    DDPConfig: ddp_train,
    LandscapeConfig: loss_landscape,
    SWAConfig: swa_run,
}

EXPERIMENTS = {
    **_ONE_RUN,
    Seeds: run_seeds,
    # measurements too: taken once per build, so both twins of a page quote the same ones
    BenchmarkConfig: benchmark,
    StepTimeConfig: training_step_times,
    ReadingsConfig: readings,
    # the chapter Distributed's proofs: new processes each, seconds each
    ProofConfig: proof,
    CollectivesConfig: counted_collectives,
}


def with_seed_offset(config):
    """``config`` with its seed shifted by ``BNLIB_SEED_OFFSET`` (a ``Seeds``: its
    configuration's); a configuration without a seed (a benchmark) as it is."""
    if isinstance(config, Seeds):
        return replace(config, config=with_seed_offset(config.config))
    if "seed" in {f.name for f in fields(config)}:
        return replace(config, seed=config.seed + seed_offset())
    return config


def run(config):
    """Run the experiment a configuration describes (a key of ``EXPERIMENTS``), once: later
    calls, from this page, its twin or a later build, read the disk cache. Its seeds are
    shifted by ``BNLIB_SEED_OFFSET`` first: the history's ``config`` holds the seed it ran."""
    if type(config) not in EXPERIMENTS:
        raise TypeError(f"no experiment takes a {type(config).__name__}")
    return cache.cached(EXPERIMENTS[type(config)])(with_seed_offset(config))


# Histories that run_all trained together (data-parallel arms sharing their processes), each
# held until run stores it in the cache, under its own configuration
_TRAINED_TOGETHER: dict[Seeds, list[dict]] = {}


def _train_ddp_arms_together(configs: Sequence) -> None:
    """Train the ``Seeds`` of ``DDPConfig`` among ``configs`` that are not cached yet in one
    start of the processes per world size (each start costs seconds), for ``run`` to store."""
    memo = cache.cached(run_seeds)
    pending = [
        experiment
        for experiment in dict.fromkeys(with_seed_offset(c) for c in configs)
        if isinstance(experiment, Seeds)
        and isinstance(experiment.config, DDPConfig)
        and not memo.check_call_in_cache(experiment)
    ]
    for size in {experiment.config.world_size for experiment in pending}:
        group = [e for e in pending if e.config.world_size == size]
        if len(group) > 1:
            trained = ddp_train_arms([(e.config, e.seeds) for e in group])
            _TRAINED_TOGETHER.update(zip(group, trained, strict=True))


def run_all(configs: Sequence, desc: str = "runs", progress: bool = True) -> list:
    """``run`` on each configuration in turn, with a text progress bar (no notebook widget).
    Data-parallel arms (``Seeds`` of ``DDPConfig``) not cached yet are trained first, all in
    the same processes."""
    _train_ddp_arms_together(configs)
    bar = tqdm(configs, desc=desc, file=sys.stderr, ascii=True, disable=not progress, ncols=80)
    return [run(config) for config in bar]
