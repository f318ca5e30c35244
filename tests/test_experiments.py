"""bnlib.experiments: runs are reproducible, cached by configuration, and report divergence."""

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlib import cache, experiments
from bnlib.benchmark import BenchmarkConfig, StepTimeConfig
from bnlib.data import load_tensors, make_loader
from bnlib.experiments import (
    NoiseConfig,
    ReadingsConfig,
    RunConfig,
    Seeds,
    readings,
    run,
    run_all,
    train_run,
    trained_model,
)
from bnlib.models import ArticleCNN, DistributionShift, PaperMLP, scale_init
from bnlib.training import confusion_matrix, evaluate, predict, recalibrate, seconds_per_step

TINY = RunConfig(norm="bnlib", train_limit=600, num_steps=20, eval_every=10, eval_train_size=200)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BNLIB_CACHE", str(tmp_path))
    yield tmp_path


def test_history_shape_and_reproducibility():
    first, again = train_run(TINY), train_run(TINY)
    assert first == again  # same seed, same numbers
    assert first["step"] == [0, 10, 20] and not first["diverged"]
    assert first["train_loss"][0] is None and first["train_loss"][-1] > 0
    assert all(0 <= a <= 1 for a in first["test_accuracy"] + first["train_accuracy"])
    assert first["config"]["norm"] == "bnlib"


def test_divergence_stops_the_run():
    history = train_run(RunConfig(activation="relu", lr=10.0, train_limit=600, num_steps=200))
    assert history["diverged"]
    assert len(history["step"]) < 5  # it stopped long before step 200


def test_cache_serves_the_same_numbers_and_a_fresh_cache_recomputes_them(fresh_cache):
    cached_call = cache.cached(experiments.train_run)
    assert not cached_call.check_call_in_cache(TINY)
    first = run(TINY)
    assert cached_call.check_call_in_cache(TINY)
    assert run(TINY) == first
    for path in fresh_cache.rglob("*"):
        if path.is_file():
            path.unlink()
    assert run(TINY) == first  # recomputed from scratch: identical


def test_run_all_and_unknown_configuration(fresh_cache):
    histories = run_all([TINY, NoiseConfig(batch_sizes=(2, 64), draws=20)], progress=False)
    assert histories[0] == train_run(TINY) and histories[1]["batch_size"] == [2, 64]
    with pytest.raises(TypeError, match="no experiment takes a dict"):
        run({"lr": 0.1})


def test_batch_noise_shrinks_with_the_batch():
    noise = experiments.batch_noise(NoiseConfig(batch_sizes=(4, 16, 64), draws=50))["noise_std"]
    assert noise[0] > noise[1] > noise[2] > 0
    assert 1.5 < noise[0] / noise[1] < 3  # about sqrt(4) = 2 per factor 4 in batch size


def test_distribution_shift_moves_every_step_in_training_only():
    shift = DistributionShift(max_shift=0.5, max_scale=1.5)
    x = torch.ones(4, 3)
    a, b = shift(x), shift(x)
    assert not torch.equal(a, b)
    assert ((a >= 1 - 0.5) & (a <= 1.5 + 0.5)).all()
    assert torch.equal(a[0], a[1])  # one draw for the whole mini-batch
    assert torch.equal(shift.eval()(x), x)


@pytest.mark.parametrize("per_example", [False, True])
def test_distribution_shift_gives_each_unit_this_steps_mean_and_variance(per_example):
    torch.manual_seed(0)
    shift = DistributionShift(max_shift=1.0, max_scale=2.0, per_example=per_example)
    x = torch.randn(20000, 400)  # a unit-variance layer: every unit mean 0, variance 1
    y = shift(x)
    mean, std = y.mean(0), y.std(0)  # (400,): this step's mu_j and sigma_j, per unit
    assert mean.abs().max() < 1.05 and mean.abs().max() > 0.9  # mu_j uniform in [-1, 1]
    assert std.min() > 0.97 and std.max() < 2.03  # sigma_j uniform in [1, 2]
    assert abs(mean.mean().item()) < 0.1 and abs(std.mean().item() - 1.5) < 0.05
    assert abs(mean.var().item() - 1 / 3) < 0.06  # the variance of U(-1, 1)
    same = shift(torch.ones(8, 400))  # eight identical examples
    assert torch.equal(same[0], same[1]) != per_example  # per example: each its own noise
    if per_example:  # the noise is independent of x and of the other examples
        noise = y - x
        assert torch.corrcoef(torch.stack([noise[:, 0], x[:, 0]]))[0, 1].abs() < 0.03
        assert torch.corrcoef(torch.stack([noise[:-1, 0], noise[1:, 0]]))[0, 1].abs() < 0.03
    assert torch.equal(shift.eval()(x), x)
    assert not torch.equal(shift.train()(x), y)  # a new distribution at every step


def test_drift_is_measured_at_inference_so_batch_norm_starts_as_the_identity():
    # At step 0 the running statistics are mean 0, variance 1: in eval mode batch norm leaves its
    # input as it is, and the two networks (same initial weights) give the same percentiles.
    config = experiments.DriftConfig(num_steps=0, probe_size=200, eval_test_size=200)
    plain = experiments.activation_drift(config)
    normed = experiments.activation_drift(
        experiments.DriftConfig(**{**config.__dict__, "norm": "bnlib"})
    )
    torch.testing.assert_close(
        torch.tensor(normed["percentiles"]),
        torch.tensor(plain["percentiles"]),
        rtol=1e-4,
        atol=1e-5,
    )


def test_distribution_shift_refuses_bad_settings():
    with pytest.raises(ValueError, match="max_scale must be >= 1"):
        DistributionShift(max_scale=0.5)
    with pytest.raises(ValueError, match="max_shift must be >= 0"):
        DistributionShift(max_shift=-1.0)
    with pytest.raises(ValueError, match=r"expected \(..., N, D\) input"):
        DistributionShift()(torch.ones(3))


def test_scale_init_sets_the_weight_scale():
    model = scale_init(PaperMLP(hidden=400), gain=3.0)
    first = model.linears[0]
    assert abs(first.weight.std().item() - 3.0 / 784**0.5) < 0.005
    assert torch.equal(first.bias, torch.zeros(400))
    with pytest.raises(ValueError, match="activation must be one of"):
        PaperMLP(activation="tanh")


def test_build_model_options():
    model = experiments.build_model(RunConfig(dropout=0.3, shift=(1.0, 2.0), norm="torch"))
    assert isinstance(model.norms[0], nn.BatchNorm1d) and model.dropout.p == 0.3
    assert isinstance(model.shifts[0], DistributionShift)
    cnn = experiments.build_model(RunConfig(model="cnn", norm="bnlib"))
    assert cnn(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="model must be"):
        experiments.build_model(RunConfig(model="rnn"))


def test_kept_weights_rebuild_the_trained_model():
    config = {**TINY.__dict__, "keep_state": True, "eval_test_size": 500, "predict_test": True}
    history = train_run(RunConfig(**config))
    model = experiments.trained_model(history)
    assert not model.training
    X_all, y_all = load_tensors("fashion-mnist", train=False)  # the last record: all of them
    assert evaluate(model, X_all, y_all)[1] == history["test_accuracy"][-1]
    assert torch.equal(history["test_predictions"], predict(model, X_all))  # the whole test set
    assert "test_predictions" not in train_run(TINY)
    with pytest.raises(ValueError, match="keep_state=True"):
        experiments.trained_model(train_run(TINY))


def test_predict_confusion_matrix_and_train_mode_evaluation():
    model = PaperMLP(norm="bnlib", dropout=0.5).train()
    X, y = load_tensors("fashion-mnist", train=False, limit=300)
    predicted = predict(model, X)
    counts = confusion_matrix(y, predicted)
    assert counts.shape == (10, 10) and counts.sum() == 300
    assert counts.trace().item() == (predicted == y).sum().item()
    assert confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1])).tolist()[:2] == [
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    ]
    before = model.norms[0].running_mean.clone()
    evaluate(model, X, y)
    assert torch.equal(model.norms[0].running_mean, before)  # eval mode: untouched
    evaluate(model, X, y, batch_size=50, train_mode=True)
    assert not torch.equal(model.norms[0].running_mean, before)  # the forgotten model.eval()
    assert model.training  # mode restored


def test_images_are_evaluated_in_chunks_with_channels_last_weights_then_left_as_they_were():
    torch.manual_seed(0)
    model = ArticleCNN(norm="torch").eval()
    X, y = load_tensors("fashion-mnist", train=False, limit=250)
    with torch.no_grad():
        direct = model(X)  # one batch, the weights as stored
    params = list(model.parameters())
    values = [p.detach().clone() for p in params]
    seen = []  # what conv2 is given: (images, its weight in channels-last order)
    channels_last = torch.channels_last
    model.conv2.register_forward_pre_hook(
        lambda m, args: seen.append(
            (len(args[0]), m.weight.is_contiguous(memory_format=channels_last))
        )
    )
    loss, accuracy = evaluate(model, X, y)
    assert seen == [(100, True), (100, True), (50, True)]
    assert accuracy == (direct.argmax(1) == y).sum().item() / len(y)
    assert loss == pytest.approx(F.nll_loss(direct, y).item(), rel=1e-5)
    assert torch.equal(predict(model, X), direct.argmax(1))
    # the same Parameter objects, the same values, contiguous again (an optimizer still holds them)
    assert all(p is q for p, q in zip(model.parameters(), params, strict=True))
    assert all(torch.equal(p, v) for p, v in zip(params, values, strict=True))
    assert all(p.is_contiguous() for p in params)
    # in training mode the batch is the one asked for: the running averages move once, with the
    # statistics of all 250 images (chunks of 100 would move them three times)
    once = copy.deepcopy(model).train()
    with torch.no_grad():
        once(X)
    seen.clear()
    evaluate(model, X, y, batch_size=250, train_mode=True)
    assert seen == [(250, True)]
    assert torch.allclose(model.bn2.running_var, once.bn2.running_var, atol=1e-6)
    assert model.bn2.num_batches_tracked.item() == 1 and not model.training


def test_seconds_per_step_is_a_positive_duration():
    X, y = load_tensors("fashion-mnist", train=True, limit=256)
    model = PaperMLP()
    seconds = seconds_per_step(model, make_loader(X, y, 32), torch.optim.SGD(model.parameters()))
    assert 0 < seconds < 5


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_batch_independent_normalisations(norm):
    """Per-example statistics: in training mode too, an example's output ignores its batch."""
    model = experiments.build_model(RunConfig(model="cnn", norm=norm, dropout=0.0)).train()
    x = torch.randn(6, 1, 28, 28)
    assert torch.allclose(model(x[:1]), model(x)[:1], atol=1e-5)
    batch_norm = experiments.build_model(RunConfig(model="cnn", norm="bnlib", dropout=0.0))
    assert not torch.allclose(batch_norm(x[:2]), batch_norm(x)[:2], atol=1e-3)


def test_norm_after_activation_places_the_layer_after_the_nonlinearity():
    before = PaperMLP(norm="bnlib", activation="relu")
    after = PaperMLP(norm="bnlib", activation="relu", norm_after_activation=True)
    after.load_state_dict(before.state_dict())
    x = torch.randn(16, 784)
    z_after = after.pre_activations(x)[0]
    assert torch.allclose(z_after, after.linears[0](x))  # the raw linear output
    after(x)
    # the first norm saw ReLU outputs: non-negative, so its running mean moved up
    assert (after.norms[0].running_mean > 0).all()
    assert after.norms[0].num_batches_tracked.item() == 2  # one update per forward pass


def test_recalibrate_sets_running_stats_to_the_training_average():
    from bnlib.training import recalibrate

    X, y = load_tensors("fashion-mnist", train=True, limit=512)
    model = PaperMLP(norm="bnlib", dropout=0.5)
    batches = list(make_loader(X, y, 128, shuffle=False))
    recalibrate(model, batches, num_batches=4)
    assert not model.training and model.norms[0].momentum == 0.1
    first = model.norms[0]
    z = torch.cat([model.linears[0](xb.flatten(1)) for xb, _ in batches])  # (512, 100)
    expected = torch.stack([model.linears[0](xb.flatten(1)).mean(0) for xb, _ in batches]).mean(0)
    assert torch.allclose(first.running_mean, expected, atol=1e-5)
    assert torch.allclose(first.running_mean, z.mean(0), atol=1e-5)  # equal batches


def test_build_model_passes_every_mlp_option():
    after = experiments.build_model(RunConfig(norm="bnlib", norm_after_activation=True))
    assert after.norm_after_activation
    group = experiments.build_model(RunConfig(norm="group"))  # 100 features
    assert group.norms[0].num_groups == 4 and group(torch.randn(3, 784)).shape == (3, 10)


def test_measurements_are_taken_once_then_read_from_the_cache(fresh_cache):
    """Both twins of a page quote the same timings: the second run reads the first's."""
    config = BenchmarkConfig(
        shapes=((4, 3, 2, 2),), implementations=("fast", "native"), repeats=2, warmup=1
    )
    first = run(config)
    assert run(config) == first and any(fresh_cache.rglob("output.pkl"))
    steps = StepTimeConfig(norms=("bnlib",), num_steps=1, rounds=1, batch_size=8)
    assert run(steps) == run(steps) and run(steps)["bnlib"] > 0


def test_bn_momentum_changes_the_running_statistics_only():
    """The momentum of the running averages plays no part in training-mode forward passes: the
    same seed trains the same weights with a cumulative (None) or an exponential average."""
    small = dict(norm="bnlib", num_steps=5, eval_every=5, eval_test_size=100, final_test_size=100)
    cumulative = train_run(RunConfig(bn_momentum=None, keep_state=True, **small))
    moving = train_run(RunConfig(bn_momentum=0.1, keep_state=True, **small))
    built = experiments.build_model(RunConfig(norm="bnlib", bn_momentum=None))
    assert all(m.momentum is None for m in built.norms)
    for key, value in cumulative["state_dict"].items():
        if "running" in key:
            assert not torch.allclose(value, moving["state_dict"][key])
        else:
            assert torch.equal(value, moving["state_dict"][key]), key


def test_readings_are_the_readings_taken_by_hand(fresh_cache):
    """Each network of the trained seeds, read with its running averages, recalibrated, and with
    each small test batch's own statistics: the numbers of doing it by hand, seed by seed (the
    MLPs are read stacked, all at once: to float rounding, at most one image of the 120 may fall
    on the other side of a tie)."""
    trained = Seeds(replace(TINY, keep_state=True), n=2)
    config = ReadingsConfig(
        trained, eval_size=120, recalibrated=(32,), recal_images=96, own_statistics=(4,)
    )
    got = readings(config)
    X, y = load_tensors(TINY.dataset, train=True, limit=TINY.train_limit)
    X_test, y_test = load_tensors(TINY.dataset, train=False, limit=120)
    image = pytest.approx(0, abs=1.01 / len(y_test))
    for history, reading in zip(run(trained), got, strict=True):
        net = trained_model(history)
        assert reading["running"] - evaluate(net, X_test, y_test)[1] == image
        fresh = recalibrate(copy.deepcopy(net), make_loader(X, y, 32, seed=1), 3)
        assert reading["recalibrated"][32] - evaluate(fresh, X_test, y_test)[1] == image
        own = evaluate(copy.deepcopy(net), X_test, y_test, 4, train_mode=True)[1]
        assert reading["own_statistics"][4] - own == image
        assert set(reading["recalibrated"]) == {32} and set(reading["own_statistics"]) == {4}
        assert reading["own_statistics"][4] != reading["running"]  # batches of 4 change it
    with pytest.raises(ValueError, match="kept no weights"):
        readings(ReadingsConfig(Seeds(TINY, n=2)))


def test_swa_reads_the_averaged_weights_with_each_statistics():
    from bnlib.experiments import SWAConfig, swa_run

    small = RunConfig(norm="bnlib", activation="relu", train_limit=600, num_steps=20, lr=0.05)
    result = swa_run(SWAConfig(run=small, start=10, every=2, recal_batches=3, recal_size=100))
    assert set(result) == {"final", "start_statistics", "final_statistics", "recomputed"}
    assert all(0 < v < 1 for v in result.values())
    # averaging from the last step only: the average is the last network, whatever its statistics
    last = swa_run(SWAConfig(run=small, start=20, recal_batches=3, recal_size=100))
    assert last["start_statistics"] == last["final_statistics"] == last["final"]
    with pytest.raises(ValueError, match="start <= num_steps"):
        swa_run(SWAConfig(run=small, start=21))
