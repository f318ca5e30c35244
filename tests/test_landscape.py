"""bnlib.landscape: the measurements along the gradient are the direct computation's, per seed."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bnlib.landscape import LandscapeConfig, along_gradient, landscape_seeds, loss_landscape
from bnlib.models import PaperMLP
from bnlib.stacked import StackedMLP

STEPS = (0.05, 0.2, 0.5)


def tiny(norm, seed):
    torch.manual_seed(seed)
    return PaperMLP(norm, hidden=8, depth=2, activation="relu")


def batch(seeds, n=16):
    generator = torch.Generator().manual_seed(123)
    xb = torch.randn(seeds, n, 784, generator=generator)
    yb = torch.randint(10, (seeds, n), generator=generator)
    return xb, yb


def direct(model, x, y, steps):
    """The measurements by hand on one PaperMLP, in float64: loss and gradient at w - eta g."""
    model = copy.deepcopy(model).double().train()

    def loss_and_grad(m):
        loss = F.nll_loss(m(x.double()), y)
        return loss.item(), torch.autograd.grad(loss, list(m.parameters()))

    loss, g = loss_and_grad(model)
    flat = torch.cat([t.flatten() for t in g])
    losses, changes = [], []
    for eta in steps:
        stepped = copy.deepcopy(model)
        with torch.no_grad():
            for p, gi in zip(stepped.parameters(), g, strict=True):
                p -= eta * gi
        stepped_loss, g2 = loss_and_grad(stepped)
        losses.append(stepped_loss)
        changes.append((torch.cat([t.flatten() for t in g2]) - flat).norm().item())
    norm = flat.norm().item()
    return {
        "loss": loss,
        "grad_norm": norm,
        "loss_range": max(losses) - min(losses),
        "grad_change": max(changes),
        "smoothness": max(c / (eta * norm) for c, eta in zip(changes, STEPS, strict=True)),
    }


@pytest.mark.parametrize("norm", [None, "bnlib", "torch"])
def test_stacked_measurements_equal_each_seeds_direct_computation(norm):
    models = [tiny(norm, s) for s in (0, 1)]
    xb, yb = batch(2)
    stacked = StackedMLP(models)
    before = copy.deepcopy(stacked.state_dict())
    measures = along_gradient(stacked, xb, yb, STEPS)
    for key, value in stacked.state_dict().items():  # the model itself is untouched
        assert torch.equal(value, before[key]), key
    for s, model in enumerate(models):
        expected = direct(model, xb[s], yb[s], STEPS)
        alone = along_gradient(StackedMLP([model]), xb[s : s + 1], yb[s : s + 1], STEPS)
        for key, value in expected.items():
            assert measures[key][s].item() == pytest.approx(value, rel=2e-3, abs=1e-5), key
            assert measures[key][s].item() == pytest.approx(alone[key][0].item(), rel=1e-4), key


def test_along_gradient_refuses_bad_input():
    xb, yb = batch(1)
    with pytest.raises(ValueError, match="step_sizes must be positive"):
        along_gradient(StackedMLP([tiny(None, 0)]), xb, yb, (0.1, 0.0))
    with pytest.raises(ValueError, match="wrap a single network"):
        along_gradient(tiny(None, 0), xb, yb, STEPS)


def test_landscape_over_seeds_matches_separate_runs():
    config = LandscapeConfig(
        norm="bnlib", train_limit=600, num_steps=20, measure_every=10, eval_test_size=200
    )
    histories = landscape_seeds(config, [0, 1])
    for s, stacked in enumerate(histories):
        separate = loss_landscape(LandscapeConfig(**{**stacked["config"], "seed": s}))
        assert stacked["step"] == separate["step"] == [0, 10]
        assert stacked["config"] == separate["config"] and not stacked["diverged"]
        for key in ("loss", "grad_norm", "loss_range", "grad_change", "smoothness"):
            torch.testing.assert_close(
                torch.tensor(stacked[key]), torch.tensor(separate[key]), rtol=1e-3, atol=1e-5
            )
        assert stacked["test_accuracy"] == pytest.approx(separate["test_accuracy"], abs=1e-2)
    assert histories[0]["loss"] != histories[1]["loss"]  # each seed its own weights and batches
