"""bnlib.stacked: S seeds trained as one network give the histories of S separate runs."""

from dataclasses import replace

import pytest
import torch

from bnlib.data import load_tensors, make_loader
from bnlib.experiments import (
    DriftConfig,
    RunConfig,
    Seeds,
    activation_drift,
    build_model,
    drift_seeds,
    run_seeds,
    train_run,
    train_seeds,
    trained_model,
)
from bnlib.stacked import StackedMLP
from bnlib.training import evaluate, evaluate_stacked, stacked_batches

SMALL = dict(train_limit=1200, num_steps=40, eval_every=20, eval_train_size=200, eval_test_size=500)


def assert_same_histories(stacked, separate, tol):
    assert stacked["step"] == separate["step"] and stacked["diverged"] == separate["diverged"]
    assert stacked["config"] == separate["config"]
    for key in ("train_loss", "test_loss", "test_accuracy", "train_accuracy"):
        for a, b in zip(stacked[key], separate[key], strict=True):
            assert (a is None and b is None) or abs(a - b) <= tol, (key, a, b)
    assert ("row_norm" in stacked) == ("row_norm" in separate)
    for key in ("row_norm", "row_angle") if "row_norm" in stacked else ():
        for a, b in zip(stacked[key], separate[key], strict=True):
            same = a is None and b is None
            assert same or max(abs(u - v) for u, v in zip(a, b, strict=True)) <= tol, key


@pytest.mark.parametrize(
    "config",
    [
        RunConfig(norm="bnlib", activation="relu", sgd_momentum=0.9, **SMALL),
        RunConfig(norm="torch", norm_after_activation=True, init_gain=2.0, **SMALL),
        RunConfig(norm="layer", depth=2, **SMALL),
        RunConfig(norm="group", activation="relu", **SMALL),
        RunConfig(norm=None, **SMALL),
        RunConfig(norm="bnlib", ghost_batch=16, weight_decay=0.05, decay_norms=False, **SMALL),
        RunConfig(norm="bnlib", watch_rows=True, **SMALL),
    ],
    ids=[
        "bnlib-momentum",
        "torch-after-activation",
        "layer",
        "group",
        "none",
        "ghost-decay",
        "watched-rows",
    ],
)
def test_stacked_seeds_train_as_separate_runs(config):
    seeds = [3, 4]
    for s, stacked in zip(seeds, train_seeds(config, seeds), strict=True):
        # float32, 40 steps: only the order of the sums differs (bmm against mm)
        assert_same_histories(stacked, train_run(replace(config, seed=s)), tol=1e-3)


def test_a_seed_that_diverges_stops_alone_as_its_separate_run_does():
    config = RunConfig(norm=None, activation="relu", lr=3.0, **SMALL)
    histories = train_seeds(config, [0, 1])
    for s, stacked in enumerate(histories):
        assert_same_histories(stacked, train_run(replace(config, seed=s)), tol=1e-3)
    mixed = train_seeds(replace(config, norm="bnlib", lr=1.0), [0, 1])  # batch norm: no divergence
    assert not any(h["diverged"] for h in mixed)


def test_kept_weights_and_predictions_are_each_seeds_own():
    config = RunConfig(norm="bnlib", keep_state=True, predict_test=True, **SMALL)
    histories = train_seeds(config, [0, 1])
    X, y = load_tensors("fashion-mnist", train=False)
    for history in histories:
        model = trained_model(history)  # a PaperMLP rebuilt from seed s's weights
        assert evaluate(model, X, y)[1] == pytest.approx(history["test_accuracy"][-1], abs=1e-12)
        assert (model(X).argmax(1) == history["test_predictions"]).float().mean() == 1
    assert not torch.equal(histories[0]["test_predictions"], histories[1]["test_predictions"])


def test_unstack_returns_the_models_it_was_built_from():
    models = [build_model(RunConfig(norm="bnlib", seed=s)) for s in (0, 1)]
    stacked = StackedMLP(models)
    X = torch.randn(16, 1, 28, 28)
    out = stacked.eval()(X)  # (S, N, 10)
    for s, model in enumerate(models):
        assert stacked.unstack(s).keys() == model.state_dict().keys()
        for key, value in model.state_dict().items():
            assert torch.equal(stacked.unstack(s)[key], value), key
        torch.testing.assert_close(out[s], model.eval()(X))
    loss, accuracy = evaluate_stacked(stacked, X, torch.zeros(16, dtype=torch.long))
    assert len(loss) == len(accuracy) == 2
    assert all(stacked.unstack(s)["linears.0.weight"].is_contiguous() for s in (0, 1))


def test_stacked_weights_are_stored_as_the_matmul_reads_them():
    """The (S, out, in) weight is a view of (S, in, out) memory: the batched matmul's operand and
    the gradient it returns are then contiguous, and autograd keeps that gradient without a copy
    (with contiguous (S, out, in) weights, copying the gradients took a quarter of a step)."""
    stacked = StackedMLP([build_model(RunConfig(norm=None, seed=s)) for s in (0, 1)])
    stacked(torch.randn(2, 8, 784)).sum().backward()
    for layer in [*stacked.linears, stacked.out]:
        assert layer.weight.shape[1:] == (layer.bias.shape[1], layer.weight.shape[2])
        assert layer.weight.transpose(1, 2).is_contiguous()
        assert layer.weight.grad.stride() == layer.weight.stride()


@pytest.mark.parametrize("per_example", [False, True])
def test_stacked_shift_draws_each_seed_the_distribution_of_a_separate_shift(per_example):
    config = RunConfig(norm="bnlib", shift=(1.0, 2.0), shift_per_example=per_example)
    models = [build_model(replace(config, seed=s)) for s in (0, 1, 2)]
    stacked_shift = StackedMLP(models).shifts[0]
    assert (
        stacked_shift.per_example == per_example and models[0].shifts[0].per_example == per_example
    )
    torch.manual_seed(0)
    x = torch.randn(3, 10000, 300)  # (S, N, D): three seeds of a unit-variance layer
    stacked = stacked_shift.train()(x)
    separate = torch.stack([models[s].shifts[0].train()(x[s]) for s in range(3)])
    for y in (stacked, separate):
        mean, std = y.mean(1), y.std(1)  # (S, D): each seed's mu_j and sigma_j
        assert mean.abs().max() < 1.1 and std.min() > 0.95 and std.max() < 2.07
        assert abs(std.mean().item() - 1.5) < 0.05 and abs(mean.var().item() - 1 / 3) < 0.06
        assert not torch.allclose(mean[0], mean[1])  # each seed its own draw
    same = stacked_shift(torch.ones(3, 4, 300))
    assert torch.equal(same[0, 0], same[0, 1]) != per_example
    assert torch.equal(stacked_shift.eval()(x), x)


def test_drift_over_seeds_matches_separate_drift_runs():
    config = DriftConfig(norm="bnlib", num_steps=40, record_every=20, probe_size=200)
    for s, stacked in zip((0, 1), drift_seeds(config, [0, 1]), strict=True):
        separate = activation_drift(replace(config, seed=s))
        assert stacked["step"] == separate["step"]
        torch.testing.assert_close(
            torch.tensor(stacked["percentiles"]),
            torch.tensor(separate["percentiles"]),
            atol=1e-4,
            rtol=0,
        )
        torch.testing.assert_close(
            torch.tensor(stacked["test_accuracy"]),
            torch.tensor(separate["test_accuracy"]),
            atol=1e-3,
            rtol=0,
        )


def test_seeds_runs_the_cnn_one_seed_after_another():
    config = RunConfig(
        model="cnn",
        norm="bnlib",
        train_limit=256,
        batch_size=32,
        num_steps=4,
        eval_every=2,
        eval_train_size=64,
        eval_test_size=64,
    )
    histories = run_seeds(Seeds(config, n=2))
    assert [h["config"]["seed"] for h in histories] == [0, 1]
    assert histories[1] == train_run(replace(config, seed=1))


def test_seeds_refuses_a_single_seed_and_unknown_configurations():
    with pytest.raises(ValueError, match="n >= 2"):
        Seeds(RunConfig(), n=1)
    with pytest.raises(TypeError, match="no experiment takes a dict over seeds"):
        Seeds({"lr": 0.1})
    with pytest.raises(ValueError, match="only the MLP trains stacked"):
        train_seeds(RunConfig(model="cnn"), [0, 1])


def test_stacked_batches_restart_each_loader_and_refuse_an_empty_one():
    a = [(torch.full((2, 3), float(i)), torch.full((2,), i)) for i in range(2)]
    b = [(torch.full((2, 3), 10.0 + i), torch.full((2,), 10 + i)) for i in range(3)]
    batches = stacked_batches([a, b])
    firsts = [next(batches)[1][:, 0].tolist() for _ in range(4)]
    assert firsts == [[0, 10], [1, 11], [0, 12], [1, 10]]  # each restarts at its own epoch end
    with pytest.raises(ValueError, match="loader 1 yields no mini-batch"):
        next(stacked_batches([a, []]))


@pytest.mark.parametrize("drop_last", [True, False])
def test_stacked_batches_gather_once_what_each_seeds_loader_gives(drop_last):
    X, y = torch.randn(50, 1, 2, 3), torch.arange(50)

    def loaders():
        return [make_loader(X, y, 12, seed=s, drop_last=drop_last) for s in (3, 7, 11)]

    gathered = stacked_batches(loaders())  # one indexing per step: the same X and y for all
    alone = loaders()
    for _ in range(3):  # three epochs, each loader drawing its next one from its own generator
        for expected in zip(*(iter(loader) for loader in alone), strict=True):
            xs, ys = next(gathered)
            assert torch.equal(xs, torch.stack([x for x, _ in expected]))
            assert torch.equal(ys, torch.stack([y for _, y in expected]))
            assert xs.is_contiguous()
    assert xs.shape[1] == (12 if drop_last else 50 % 12)  # the last batch: dropped or kept
    with pytest.raises(ValueError, match="loader 1 yields no mini-batch"):
        next(stacked_batches([alone[0], make_loader(X, y, 60, seed=2)]))
