"""training.frozen_statistics: a second pass over the same data leaves the running statistics;
training.accumulation_gap: micro-batches against one mini-batch."""

import copy
from contextlib import nullcontext

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import bnlib
from bnlib.training import frozen_statistics

LAYERS = {"torch": nn.BatchNorm1d, "bnlib": bnlib.BatchNorm1d}


def block(layer, momentum=0.1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4, bias=False), layer(4, momentum=momentum), nn.ReLU())


def state(model):
    norm = model[1]
    return norm.running_mean.clone(), norm.running_var.clone(), norm.num_batches_tracked.item()


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_pass_inside_normalises_as_usual_and_leaves_the_statistics(name, momentum):
    model = block(LAYERS[name], momentum)
    x = torch.randn(16, 6)
    model(torch.randn(16, 6))  # some history: a cumulative average (None) has a count to keep
    before = state(model)
    expected = copy.deepcopy(model)(x)  # training mode: the batch's statistics
    with frozen_statistics(model):
        out = model(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    after = state(model)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert after[2] == before[2] and model[1].momentum == momentum
    model(x)  # and outside, the layer updates again
    assert state(model)[2] == before[2] + 1 and not torch.equal(state(model)[0], before[0])


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_checkpointing_updates_twice_unless_the_recomputation_is_frozen(name):
    x = torch.randn(32, 6, requires_grad=True)
    plain, twice, fixed = (block(LAYERS[name]) for _ in range(3))
    plain(x).pow(2).sum().backward()
    checkpoint(twice, x, use_reentrant=False).pow(2).sum().backward()
    recompute_frozen = lambda: (nullcontext(), frozen_statistics(fixed))  # noqa: E731
    checkpoint(fixed, x, use_reentrant=False, context_fn=recompute_frozen).pow(2).sum().backward()

    assert state(plain)[2] == 1 and state(twice)[2] == 2  # the recomputation counted again
    assert not torch.allclose(state(twice)[0], state(plain)[0])
    for got, expected in zip(state(fixed), state(plain), strict=True):
        assert torch.equal(torch.as_tensor(got), torch.as_tensor(expected))
    for a, b in zip(fixed.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)  # the gradients are untouched


def test_accumulation_matches_one_batch_without_batch_norm_and_not_with_it():
    from bnlib.models import PaperMLP
    from bnlib.training import accumulation_gap

    x, y = torch.randn(32, 1, 28, 28, dtype=torch.float64), torch.arange(32) % 10
    gaps = {}
    for norm in (None, "bnlib"):
        torch.manual_seed(0)
        gaps[norm] = accumulation_gap(PaperMLP(norm=norm).double(), x, y, micro_batches=4)
    assert gaps[None] < 1e-12 and gaps["bnlib"] > 0.05
    with pytest.raises(ValueError, match="do not split into 3 equal micro-batches"):
        accumulation_gap(PaperMLP(norm=None).double(), x, y, micro_batches=3)
