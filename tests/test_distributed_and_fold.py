"""bnlib.SyncBatchNorm over 2 and 3 gloo processes equals batch norm on the concatenated batch;
bnlib.fold removes batch norm layers without changing eval outputs."""

import copy
import os

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import bnlib
from bnlib.distributed import (
    SyncBatchNorm,
    collectives_and_stats,
    compare_with_one_process,
    spawn,
)
from bnlib.folding import fold, fold_into_next
from bnlib.models import ArticleCNN, PaperMLP


@pytest.mark.parametrize("sizes", [(3, 5), (2, 4, 1)], ids=["2 processes", "3 processes"])
def test_sync_batch_norm_equals_batch_norm_on_the_whole_batch(sizes):
    """Outputs, input gradients, parameter gradients and running statistics, uneven slices."""
    diffs = compare_with_one_process(sizes)
    assert set(diffs) == {"output", "grad_input", "grad_parameters", "running_stats"}
    assert max(diffs.values()) < 1e-12


def test_sync_batch_norm_calls_one_collective_each_way_and_stays_stable_in_float32():
    """One all-gather forward, one all-reduce backward; the merge of the slices' statistics keeps
    the digits the naive sum of x and x**2 would lose (mean 1e4, standard deviation 1e-2)."""
    torch.manual_seed(0)
    x = 1e4 + 1e-2 * torch.randn(16, 3, 4, 4)  # float32
    reference = x.double().var((0, 2, 3))  # unbiased, as running_var
    for rank in collectives_and_stats(x, world_size=2):
        assert rank["counts"] == {"all_gather": 1, "all_reduce": 1}
        assert_close(rank["mean"].double(), x.double().mean((0, 2, 3)), rtol=1e-7, atol=0)
        assert_close(rank["running_var"].double(), reference, rtol=1e-3, atol=0)


def test_sync_batch_norm_float16_counts_and_sums_do_not_overflow():
    """2 x 65,536 float16 values per channel: counts and sums in float32, as the layer's own
    batch norm; the running estimates stay float16 and finite."""
    torch.manual_seed(0)
    x = (2 * torch.randn(64, 2, 32, 64) + 3).half()
    reference = x.double()
    for rank in collectives_and_stats(x, world_size=2):
        assert rank["running_var"].dtype == torch.float16
        assert torch.isfinite(rank["running_var"]).all()
        assert_close(rank["mean"].double(), reference.mean((0, 2, 3)), rtol=1e-3, atol=0)
        assert_close(rank["running_var"].double(), reference.var((0, 2, 3)), rtol=2e-3, atol=0)


def test_the_proofs_start_their_processes_once_then_are_read_from_the_cache(tmp_path, monkeypatch):
    """run(ProofConfig) and run(CollectivesConfig) answer what compare_with_one_process and
    collectives_and_stats answer, and a second call (the page's twin) starts no process."""
    from bnlib import distributed
    from bnlib.distributed import CollectivesConfig, ProofConfig
    from bnlib.experiments import run, with_seed_offset

    monkeypatch.setenv("BNLIB_CACHE", str(tmp_path))
    starts = []

    def counting_spawn(fn, world_size, *args):
        starts.append(world_size)
        return spawn(fn, world_size, *args)

    monkeypatch.setattr(distributed, "spawn", counting_spawn)
    diffs = run(ProofConfig(sizes=(2, 4, 1)))
    assert set(diffs) == {"output", "grad_input", "grad_parameters", "running_stats"}
    assert max(diffs.values()) < 1e-12 and starts == [3]
    config = CollectivesConfig(shape=(6, 2, 3, 3), world_size=2, seed=5)
    counted = run(config)
    assert starts == [3, 2] and len(counted) == 2
    x = torch.randn(
        config.shape, generator=torch.Generator().manual_seed(with_seed_offset(config).seed)
    )
    for rank in counted:
        assert rank["counts"] == {"all_gather": 1, "all_reduce": 1}
        assert_close(rank["mean"], x.mean((0, 2, 3)))
        assert_close(rank["running_var"], x.var((0, 2, 3)))
    assert run(ProofConfig(sizes=(2, 4, 1))) == diffs and starts == [3, 2]  # from the cache
    assert run(config)[1]["counts"] == counted[1]["counts"] and starts == [3, 2]


def test_single_process_sync_batch_norm_is_batch_norm():
    ours, reference = SyncBatchNorm(4), nn.BatchNorm1d(4)
    x = torch.randn(6, 4, 3)
    assert_close(ours(x), reference(x))
    assert_close(ours.running_var, reference.running_var)
    with pytest.raises(ValueError, match=r"expected 2D or 3D or 4D or 5D input \(got 1D"):
        ours(torch.randn(4))


def test_convert_sync_batchnorm_keeps_state_and_mode():
    model = ArticleCNN(norm="torch")
    model(torch.randn(4, 1, 28, 28))
    model.eval()
    reference = copy.deepcopy(model)
    converted = SyncBatchNorm.convert_sync_batchnorm(model)
    assert sum(isinstance(m, SyncBatchNorm) for m in converted.modules()) == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    assert not converted.bn1.training
    assert converted.bn1.weight is model.bn1.weight  # same Parameter: optimisers keep working
    x = torch.randn(2, 1, 28, 28)
    assert_close(converted(x), reference(x))


@pytest.mark.parametrize("norm", ["torch", "bnlib"])
def test_fold_removes_batch_norm_and_keeps_eval_outputs(norm):
    torch.manual_seed(0)
    model = ArticleCNN(norm=norm)
    for _ in range(3):  # give the running statistics and parameters real values
        model(torch.randn(16, 1, 28, 28) * 2 + 0.5)
    with torch.no_grad():
        for bn in (model.bn1, model.bn2, model.fc1_bn):
            bn.weight.uniform_(0.5, 1.5), bn.bias.normal_()
    model.eval()
    folded = fold(model)
    kinds = (nn.BatchNorm1d, nn.BatchNorm2d, bnlib.BatchNorm1d, bnlib.BatchNorm2d)
    assert not any(isinstance(m, kinds) for m in folded.modules())
    x = torch.randn(8, 1, 28, 28)
    assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert model.bn1 is not None and isinstance(model.bn1, kinds)  # the original is untouched


class SharedOutput(nn.Module):
    """A linear layer whose output is read twice: its batch norm cannot be folded into it."""

    def __init__(self):
        super().__init__()
        self.linear, self.bn = nn.Linear(4, 4), bnlib.BatchNorm1d(4)
        self.after_relu = nn.BatchNorm1d(4)

    def forward(self, x):
        z = self.linear(x)
        return self.after_relu(torch.relu(self.bn(z) + z))


def test_fold_only_what_can_be_folded():
    mlp = PaperMLP(norm="bnlib")
    mlp(torch.randn(32, 784) + 1)
    mlp.eval()
    folded = fold(mlp)
    assert not any(isinstance(m, bnlib.BatchNorm1d) for m in folded.modules())
    x = torch.randn(5, 784)
    assert_close(folded(x), mlp(x))

    shared = SharedOutput()
    shared(torch.randn(8, 4))
    shared.eval()
    kept = fold(shared)
    assert isinstance(kept.bn, bnlib.BatchNorm1d)  # its input has two readers
    assert isinstance(kept.after_relu, nn.BatchNorm1d)  # it follows a ReLU, not a layer
    x = torch.randn(3, 4)
    assert_close(kept(x), shared(x))


def _trained_eval(model, x):
    """``model`` after a few training passes (real running statistics, moved affine), in eval."""
    for _ in range(3):
        model(x)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | bnlib.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_()
    return model.eval()


def test_fold_a_batch_norm_after_the_activation_into_the_next_layer():
    torch.manual_seed(0)
    mlp = _trained_eval(
        PaperMLP("bnlib", activation="relu", dropout=0.2, norm_after_activation=True),
        torch.randn(32, 784) + 1,
    )
    folded = fold(mlp)
    assert not any(isinstance(m, bnlib.BatchNorm1d) for m in folded.modules())
    x = torch.randn(5, 784)
    assert_close(folded(x), mlp(x), rtol=1e-5, atol=1e-5)

    for padding, kept in ((0, False), ("valid", False), (1, True), ("same", True)):
        next_conv = nn.Conv2d(3, 4, 3, padding=padding)
        net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.BatchNorm2d(3), next_conv)
        net = _trained_eval(net, torch.randn(8, 2, 9, 9))
        out = fold(net)
        assert any(isinstance(m, nn.BatchNorm2d) for m in out.modules()) == kept
        x = torch.randn(2, 2, 9, 9)
        assert_close(out(x), net(x), rtol=1e-5, atol=1e-5)


def test_fold_into_next_says_what_cannot_be_folded():
    bn = nn.BatchNorm2d(3).eval()
    with pytest.raises(ValueError, match="pads its input"):
        fold_into_next(bn, nn.Conv2d(3, 4, 3, padding=1))
    with pytest.raises(ValueError, match="grouped convolution"):
        fold_into_next(bn, nn.Conv2d(3, 3, 3, groups=3))
    with pytest.raises(ValueError, match="3 channels, the layer reads 5"):
        fold_into_next(bn, nn.Linear(5, 2))
    with pytest.raises(ValueError, match="linear or convolution layer, got ReLU"):
        fold_into_next(bn, nn.ReLU())


def test_fold_needs_running_statistics():
    with pytest.raises(ValueError, match="without running statistics"):
        fold(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False)))


def _rank_and_world(rank, world_size):
    """What a spawned process sees of its group (importable, as spawn needs)."""
    return rank, world_size, torch.distributed.get_rank(), torch.distributed.get_world_size()


def test_spawn_picks_no_port_beforehand(monkeypatch):
    """The processes meet through a file: the caller binds no socket, so no TCP port is found
    free then released for another process to take (several notebooks and tests start processes
    at once)."""
    import socket

    def no_bind(self, address):
        raise AssertionError(f"spawn bound a socket to {address} beforehand")

    monkeypatch.setattr(socket.socket, "bind", no_bind)
    assert spawn(_rank_and_world, 3) == [(r, 3, r, 3) for r in range(3)]


def test_ddp_with_sync_batch_norm_trains_like_one_process_on_the_whole_batch():
    from bnlib.data import load_tensors
    from bnlib.experiments import DDPConfig, RunConfig, build_model, ddp_train

    config = DDPConfig(
        sync=True,
        model="mlp",
        per_process_batch=3,
        num_steps=6,
        eval_every=1,
        train_limit=300,
        eval_test_size=100,
        lr=0.1,
    )
    synchronised = ddp_train(config)
    local = ddp_train(DDPConfig(**{**config.__dict__, "sync": False}))

    # the same global mini-batches, on one process
    X, y = load_tensors("fashion-mnist", train=True, limit=300)
    model = build_model(RunConfig(model="mlp", norm="bnlib"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(6):
        index = torch.randint(len(X), (6,), generator=generator)
        optimizer.zero_grad()
        loss = nn.functional.nll_loss(model(X[index]), y[index])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert synchronised["train_loss"] == pytest.approx(losses, abs=1e-5)
    assert local["train_loss"] != pytest.approx(losses, abs=1e-3)  # per-process statistics differ


def test_ddp_seeds_in_one_set_of_processes_equal_one_run_per_seed():
    """Every seed trained in turn in the same processes gets the history of its own run (the
    CNN: its dropout draws from the global generator, which each seed must start afresh)."""
    from dataclasses import replace

    from bnlib.experiments import DDPConfig, ddp_train, ddp_train_seeds

    config = DDPConfig(
        sync=True,
        model="cnn",
        per_process_batch=3,
        num_steps=4,
        eval_every=2,
        train_limit=300,
        eval_test_size=100,
        lr=0.1,
        seed=5,
    )
    together = ddp_train_seeds(config, [5, 6])
    apart = [ddp_train(replace(config, seed=s)) for s in (5, 6)]
    assert together == apart
    assert [h["config"]["seed"] for h in together] == [5, 6]
    assert together[0]["train_loss"] != together[1]["train_loss"]  # the seeds differ


def test_run_all_trains_data_parallel_arms_in_one_start_of_the_processes(tmp_path, monkeypatch):
    """Arms not cached yet share one start of the processes, and each gets the histories of its
    own run, stored in the cache under its own configuration."""
    from dataclasses import replace

    from bnlib import experiments
    from bnlib.experiments import DDPConfig, Seeds, ddp_train_seeds, run_all, with_seed_offset

    monkeypatch.setenv("BNLIB_CACHE", str(tmp_path))
    base = DDPConfig(num_steps=3, eval_every=3, train_limit=200, eval_test_size=50, seed=2)
    pairs = ((False, 2), (True, 3))  # (sync, per_process_batch)
    arms = [Seeds(replace(base, sync=s, per_process_batch=b), 2) for s, b in pairs]
    starts = []

    def counting_spawn(fn, world_size, *args):
        starts.append(fn.__name__)
        return spawn(fn, world_size, *args)

    monkeypatch.setattr(experiments, "spawn", counting_spawn)
    together = run_all(arms, progress=False)
    assert starts == ["ddp_seeds_worker"] and not experiments._TRAINED_TOGETHER
    assert run_all(arms, progress=False) == together and len(starts) == 1  # read from the cache
    shifted = [with_seed_offset(arm) for arm in arms]
    assert together == [ddp_train_seeds(arm.config, arm.seeds) for arm in shifted]
    assert together[0] != together[1]


def test_torchrun_script(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",  # torchrun binds its own rendezvous port: none to race for
            str(root / "scripts/train_ddp.py"),
            "--sync",
            "--model",
            "mlp",
            "--per-process-batch",
            "4",
            "--steps",
            "4",
            "--eval-every",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["2", "4"]
