"""Ghost batch norm, masked batch norm for padded sequences, and weight decay without the
normalisation layers: what the chapter "The batch" trains with."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from bnlib.experiments import RunConfig, build_model, make_optimizer
from bnlib.modules import GhostBatchNorm1d, GhostBatchNorm2d, masked_batch_norm
from bnlib.stacked import StackedMLP


@pytest.mark.parametrize(
    "ghost_cls, plain_cls, shape",
    [
        (GhostBatchNorm1d, nn.BatchNorm1d, (22, 3)),
        (GhostBatchNorm2d, nn.BatchNorm2d, (11, 3, 2, 2)),
    ],
)
def test_ghost_batches_are_normalised_one_after_another_as_plain_batches(
    ghost_cls, plain_cls, shape
):
    torch.manual_seed(0)
    ghost, plain = ghost_cls(3, momentum=0.3, virtual_batch_size=4), plain_cls(3, momentum=0.3)
    with torch.no_grad():
        plain.weight.normal_()
        plain.bias.normal_()
    ghost.load_state_dict(plain.state_dict())
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1
    ghost.double(), plain.double()
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    weights = torch.randn(shape, dtype=torch.float64)
    (ghost(a) * weights).sum().backward()
    # the same split by hand: ghost batches of 4 (the last one smaller), each a plain batch
    (torch.cat([plain(part) for part in b.split(4)]) * weights).sum().backward()
    assert_close(a.grad, b.grad)
    assert_close(ghost.weight.grad, plain.weight.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(getattr(ghost, name), getattr(plain, name))
    assert ghost.num_batches_tracked.item() == -(-shape[0] // 4)  # one update per ghost batch
    # and the whole batch at once is not the same normalisation
    assert not torch.allclose(ghost(x), plain.train()(x))


def test_ghost_batch_norm_is_the_plain_layer_in_eval_mode_and_on_small_batches():
    torch.manual_seed(0)
    ghost, plain = GhostBatchNorm1d(3, virtual_batch_size=8), nn.BatchNorm1d(3)
    x = torch.randn(8, 3)
    assert_close(ghost(x), plain(x))  # a batch no larger than a ghost batch: one batch
    assert_close(ghost.running_var, plain.running_var)
    big = torch.randn(40, 3)
    assert_close(ghost.eval()(big), plain.eval()(big))
    assert "virtual_batch_size=8" in repr(ghost)


@pytest.mark.parametrize("size", [1, 0, 2.5, None])
def test_ghost_batch_norm_refuses_a_ghost_batch_without_statistics(size):
    with pytest.raises(ValueError, match="virtual_batch_size must be an integer >= 2"):
        GhostBatchNorm1d(3, virtual_batch_size=size)


def test_ghost_batch_builds_ghost_layers_for_bnlib_only():
    model = build_model(RunConfig(norm="bnlib", activation="relu", ghost_batch=16, bn_momentum=0.2))
    assert all(type(m) is GhostBatchNorm1d for m in model.norms)
    assert {(m.virtual_batch_size, m.momentum) for m in model.norms} == {(16, 0.2)}
    stacked = StackedMLP([model, build_model(RunConfig(norm="bnlib", ghost_batch=16, seed=1))])
    assert all(type(m.norm) is GhostBatchNorm1d for m in stacked.norms)
    with pytest.raises(ValueError, match="ghost_batch needs model='mlp' and norm='bnlib'"):
        build_model(RunConfig(norm="torch", ghost_batch=16))


@pytest.mark.parametrize("norm", ["bnlib", "layer"])
@pytest.mark.parametrize("stacked", [False, True])
def test_decay_norms_false_leaves_gamma_and_beta_out_of_the_weight_decay(norm, stacked):
    def one_step(decay_norms):
        config = RunConfig(norm=norm, lr=0.5, weight_decay=0.1, decay_norms=decay_norms)
        model = build_model(config)
        if stacked:
            model = StackedMLP([model, build_model(config)])
        with torch.no_grad():
            for norm_layer in model.norms:
                for p in norm_layer.parameters():
                    p.fill_(2.0)
        optimizer = make_optimizer(model, config)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # only the decay moves the weights
        optimizer.step()
        return {name: p.detach() / before[name] for name, p in model.named_parameters()}

    shrink = 1 - 0.5 * 0.1
    for decay_norms, norm_factor in ((True, shrink), (False, 1.0)):
        for name, factor in one_step(decay_norms).items():
            expected = norm_factor if name.startswith("norms.") else shrink
            assert_close(factor, torch.full_like(factor, expected), msg=name)


def test_masked_batch_norm_normalises_the_real_steps_only():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, dtype=torch.float64) * 2 + 1
    lengths = torch.tensor([6, 2, 4, 1])
    mask = torch.arange(6) < lengths[:, None]
    padded = x * mask[:, None, :]
    ours, reference = nn.BatchNorm1d(3).double(), nn.BatchNorm1d(3).double()
    a = padded.clone().requires_grad_()
    out = masked_batch_norm(ours, a, mask)
    real = torch.cat([padded[i, :, :n].t() for i, n in enumerate(lengths.tolist())])  # (13, 3)
    expected = reference(real)
    assert_close(out.transpose(1, 2)[mask], expected)
    assert (out.transpose(1, 2)[~mask] == 0).all()
    assert_close(ours.running_mean, reference.running_mean)
    assert_close(ours.running_var, reference.running_var)
    out.sum().backward()
    assert (a.grad.transpose(1, 2)[~mask] == 0).all()  # the padding gets no gradient
    plain = nn.BatchNorm1d(3).double()(padded)  # the padding enters the statistics
    assert not torch.allclose(plain.transpose(1, 2)[mask], expected)


def test_masked_batch_norm_refuses_a_mask_of_the_wrong_shape_or_type():
    layer, x = nn.BatchNorm1d(3), torch.randn(4, 3, 6)
    with pytest.raises(ValueError, match=r"mask must be a boolean \(N, L\) = \(4, 6\) tensor"):
        masked_batch_norm(layer, x, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be a boolean"):
        masked_batch_norm(layer, x, torch.ones(4, 6))
    with pytest.raises(ValueError, match=r"expected a padded \(N, C, L\) input"):
        masked_batch_norm(layer, torch.randn(4, 3), torch.ones(4, 3, dtype=torch.bool))
