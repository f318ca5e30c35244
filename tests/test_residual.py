"""bnlib.residual: the residual network's variants, weight standardisation, adaptive clipping."""

import math

import pytest
import torch
from torch.testing import assert_close

from bnlib import experiments
from bnlib.experiments import RunConfig, train_run
from bnlib.residual import (
    VARIANTS,
    ResidualMLP,
    WSLinear,
    adaptive_gradient_clipping,
    branch_ratios,
    power_law_exponent,
)


def images(n=32, seed=0):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_gives_log_probabilities_and_gradients(variant):
    torch.manual_seed(0)
    model = ResidualMLP(variant, blocks=3, width=16)
    out = model(images())
    assert out.shape == (32, 10)
    assert_close(out.exp().sum(1), torch.ones(32))
    out.sum().backward()
    assert all(p.grad is not None for p in model.blocks.parameters() if p.requires_grad)


@pytest.mark.parametrize("variant", ["bn_zero_gamma", "skipinit", "fixup"])
def test_blocks_that_start_as_the_identity_add_nothing_at_initialisation(variant):
    torch.manual_seed(0)
    model = ResidualMLP(variant, blocks=4, width=16)
    assert branch_ratios(model, images()) == [0.0] * 4
    h = model.stream(images())
    for before, after in zip(h[:-1], h[1:], strict=True):  # relu of a non-negative stream
        assert_close(after, before)


def test_batch_norm_blocks_shrink_like_one_over_the_square_root_of_depth():
    """De and Smith's bias towards the identity: each batch-normalised branch adds about unit
    variance to a stream whose variance grows with the block's index."""
    torch.manual_seed(0)
    ratios = branch_ratios(ResidualMLP("bn", blocks=16, width=64), images(256))
    scaled = [r * math.sqrt(i + 1) for i, r in enumerate(ratios)]
    assert ratios[-1] < ratios[0] / 3
    assert max(scaled[1:]) < 1.3 * min(scaled[1:])
    assert -0.6 < power_law_exponent(ratios) < -0.4


def test_torch_and_bnlib_batch_norm_give_the_same_network():
    outputs = []
    for norm in ("torch", "bnlib"):
        torch.manual_seed(0)
        outputs.append(ResidualMLP("bn", blocks=2, width=16, norm=norm)(images()))
    assert_close(outputs[0], outputs[1])


def test_bad_arguments_say_what_was_wrong():
    with pytest.raises(ValueError, match="variant must be one of"):
        ResidualMLP("batch")
    with pytest.raises(ValueError, match="needs norm 'bnlib' or 'torch', got 'layer'"):
        ResidualMLP("bn", norm="layer")
    with pytest.raises(ValueError, match="trains without normalisation: norm must be None"):
        ResidualMLP("fixup", norm="torch")
    with pytest.raises(ValueError, match="blocks must be at least 1"):
        ResidualMLP("bn", blocks=0)


def test_ws_linear_standardises_each_row_and_ignores_the_weights_scale():
    torch.manual_seed(0)
    layer = WSLinear(50, 8)
    w = layer.standardised_weight()
    assert_close(w.mean(1), torch.zeros(8), atol=1e-6, rtol=0)
    assert_close(w.var(1, correction=0), torch.full((8,), 1 / 50))
    x = torch.randn(4, 50)
    before = layer(x)
    with torch.no_grad():
        layer.weight.mul_(7.5).add_(3.0)  # a scale and a per-row shift: standardised away
    assert_close(layer(x), before)


def test_adaptive_clipping_bounds_each_rows_gradient_relative_to_its_weights():
    layer, skipped = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
    model = torch.nn.Sequential(layer, skipped)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 0]]))
        layer.bias.copy_(torch.tensor([0.5, 0.0, 1.0]))
    layer.weight.grad = torch.tensor([[0.0, 3.0, 4.0, 0], [0.01, 0, 0, 0], [1.0, 0, 0, 0]])
    layer.bias.grad = torch.tensor([1.0, 1.0, 0.001])
    skipped.weight.grad = torch.full((2, 3), 100.0)
    adaptive_gradient_clipping(model, clipping=0.1, skip=(skipped,))
    norms = torch.linalg.vector_norm(layer.weight.grad, dim=1)
    # row 0: |G| = 5 > 0.1 * 1 -> 0.1; row 1: 0.01 <= 0.2, kept; row 2: W = 0 -> eps 1e-3
    assert_close(norms, torch.tensor([0.1, 0.01, 0.1 * 1e-3]))
    assert_close(layer.weight.grad[0], torch.tensor([0.0, 0.06, 0.08, 0]))
    assert_close(layer.bias.grad, torch.tensor([0.05, 1e-4, 0.001]))  # per entry
    assert_close(skipped.weight.grad, torch.full((2, 3), 100.0))
    with pytest.raises(ValueError, match="clipping must be > 0"):
        adaptive_gradient_clipping(model, clipping=0)


def test_residual_runs_train_and_clipping_changes_them():
    config = RunConfig(
        model="resmlp", variant="nf", blocks=2, train_limit=256, batch_size=32, num_steps=8,
        eval_every=4, eval_test_size=64, eval_train_size=64, final_test_size=128, lr=0.5,
    )  # fmt: skip
    plain, clipped = train_run(config), train_run(RunConfig(**{**config.__dict__, "agc": 0.01}))
    assert len(plain["test_accuracy"]) == 3 and not plain["diverged"]
    assert plain["train_loss"][-1] != clipped["train_loss"][-1]
    with pytest.raises(ValueError, match="needs norm 'bnlib' or 'torch'"):
        train_run(RunConfig(model="resmlp", variant="bn", norm=None))


def test_power_law_exponent():
    assert power_law_exponent([3 * k**-0.5 for k in range(1, 17)]) == pytest.approx(-0.5)
    assert power_law_exponent([2.0, 2.0, 2.0]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least two positive values"):
        power_law_exponent([1.0, 0.0])


def test_clipping_applies_to_every_model_and_leaves_its_classifier_out(monkeypatch):
    """The article's CNN, whose classifier is ``fc2`` (there is no ``out``), trains clipped."""
    skipped = []
    real = experiments.adaptive_gradient_clipping

    def spy(model, clipping, skip=()):
        skipped.append(skip)
        return real(model, clipping, skip=skip)

    monkeypatch.setattr(experiments, "adaptive_gradient_clipping", spy)
    config = RunConfig(
        model="cnn", agc=0.01, train_limit=64, batch_size=32, num_steps=2, eval_every=2,
        eval_test_size=32, eval_train_size=32, final_test_size=32,
    )  # fmt: skip
    history = train_run(config)
    assert not history["diverged"] and len(skipped) == 2
    model = experiments.build_model(config)
    assert [type(m).__name__ for m in skipped[0]] == ["Linear"]
    assert skipped[0][0].weight.shape == model.fc2.weight.shape
