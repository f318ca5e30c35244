"""bnlib.diagnostics: weight-row norms and dead ReLUs of a PaperMLP."""

import pytest
import torch

from bnlib.diagnostics import dead_units, row_norms
from bnlib.models import PaperMLP


def test_row_norms_follow_each_row():
    torch.manual_seed(0)
    model = PaperMLP("bnlib", hidden=6, depth=2, activation="relu")
    before = row_norms(model)
    with torch.no_grad():
        model.linears[1].weight[2] *= 5
    after = row_norms(model)
    assert [t.shape for t in after] == [(6,), (6,)]
    growth = after[1] / before[1]
    torch.testing.assert_close(growth[2], torch.tensor(5.0))
    torch.testing.assert_close(torch.cat([growth[:2], growth[3:]]), torch.ones(5))


def test_dead_units_are_those_silent_on_every_image():
    torch.manual_seed(0)
    model = PaperMLP("bnlib", hidden=6, depth=2, activation="relu").train()
    X = torch.randn(50, 784)
    with torch.no_grad():
        model.norms[1].bias[:3] = -100.0  # batch norm's beta: three units silenced...
        model.norms[1].bias[3:] = 100.0  # ...three always on
    dead = dead_units(model, X, batch_size=16)
    assert dead[1].tolist() == [True] * 3 + [False] * 3
    assert not dead[0].any() and model.training  # the mode is restored


def test_dead_units_refuses_a_sigmoid_network_and_no_images():
    with pytest.raises(ValueError, match="needs ReLUs"):
        dead_units(PaperMLP(), torch.randn(4, 784))
    with pytest.raises(ValueError, match="at least one image"):
        dead_units(PaperMLP(activation="relu"), torch.randn(0, 784))
    with pytest.raises(TypeError, match="takes a PaperMLP"):
        row_norms(torch.nn.Linear(3, 3))
