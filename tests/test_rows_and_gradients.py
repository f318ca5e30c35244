"""bnlib.diagnostics' probes of training: row norms and angles along training, gradient norms."""

import math
from dataclasses import replace

import pytest
import torch
from torch.testing import assert_close

from bnlib.diagnostics import gradient_norms, row_angles, row_watch
from bnlib.experiments import RunConfig, train_run
from bnlib.models import PaperMLP


def test_row_angles_measure_small_and_large_rotations_exactly():
    torch.manual_seed(0)
    rows = torch.randn(5, 50, dtype=torch.float64)
    other = torch.randn(5, 50, dtype=torch.float64)
    other -= (other * rows).sum(1, keepdim=True) / rows.norm(dim=1, keepdim=True) ** 2 * rows
    unit_across = other / other.norm(dim=1, keepdim=True) * rows.norm(dim=1, keepdim=True)
    angles = torch.tensor([1e-4, 1e-2, 0.5, 1.5, 3.0], dtype=torch.float64)
    turned = 3.0 * (rows * angles.cos()[:, None] + unit_across * angles.sin()[:, None])
    assert_close(row_angles(rows, turned), angles, rtol=1e-9, atol=1e-12)
    assert_close(row_angles(rows.expand(2, 5, 50), turned.expand(2, 5, 50))[1], angles)
    with pytest.raises(ValueError, match="two copies of one weight"):
        row_angles(rows, rows[:3])


def test_row_watch_gives_per_seed_medians_and_no_angle_without_a_previous_step():
    model = PaperMLP("bnlib", activation="relu")
    before = [m.weight.detach().clone() for m in model.linears]
    with torch.no_grad():
        model.linears[0].weight.mul_(2.0)  # longer rows, same directions
    watched = row_watch(list(model.linears), before)
    expected = before[0].norm(dim=1).median().item() * 2
    assert math.isclose(watched["row_norm"][0][0], expected, rel_tol=1e-6)
    assert max(watched["row_angle"][0]) < 1e-12  # scaled or untouched: no turn
    assert row_watch(list(model.linears), None)["row_angle"] is None


def test_watched_rows_turn_by_the_angle_of_the_step_recorded():
    config = RunConfig(norm="bnlib", activation="relu", train_limit=600, num_steps=6)
    history = train_run(replace(config, eval_every=3, watch_rows=True, keep_state=True))
    assert history["step"] == [0, 3, 6] and history["row_angle"][0] is None
    assert len(history["row_norm"][2]) == 3 and all(0 < a < 0.5 for a in history["row_angle"][2])
    # the last record's norms are those of the kept weights
    final = history["state_dict"]
    for i, norm in enumerate(history["row_norm"][2]):
        assert math.isclose(norm, final[f"linears.{i}.weight"].norm(dim=1).median().item())


def test_gradient_norms_are_those_autograd_gives_and_leave_the_gradients_alone():
    torch.manual_seed(0)
    model = PaperMLP("bnlib", depth=4, activation="relu").eval()
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    norms = gradient_norms(model, x, y)
    assert not model.training and all(p.grad is None for p in model.parameters())
    reference = PaperMLP("bnlib", depth=4, activation="relu")
    reference.load_state_dict(model.state_dict())
    torch.nn.functional.nll_loss(reference.train()(x), y).backward()
    assert_close(
        torch.tensor(norms), torch.stack([m.weight.grad.norm() for m in reference.linears])
    )
    with pytest.raises(TypeError, match="gradient_norms takes a PaperMLP"):
        gradient_norms(torch.nn.Linear(3, 3), x, y)
