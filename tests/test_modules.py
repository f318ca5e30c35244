"""bnlib.BatchNorm*d against torch.nn.BatchNorm*d: same contract, same numbers."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close

import bnlib

PAIRS = {
    1: (bnlib.BatchNorm1d, nn.BatchNorm1d, [(6, 4), (5, 4, 7)]),
    2: (bnlib.BatchNorm2d, nn.BatchNorm2d, [(4, 4, 5, 3)]),
    3: (bnlib.BatchNorm3d, nn.BatchNorm3d, [(3, 4, 2, 3, 3)]),
}


def twins(kind, **kwargs):
    """A bnlib layer and a PyTorch layer with the same configuration and state."""
    ours_cls, theirs_cls, _ = PAIRS[kind]
    theirs = theirs_cls(4, **kwargs)
    ours = ours_cls(4, **kwargs)
    if theirs.affine:
        with torch.no_grad():
            theirs.weight.normal_()
            theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from([1, 2, 3]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    momentum=st.sampled_from([None, 0.1, 1.0, 0.3]),
    eps=st.sampled_from([1e-5, 1e-2]),
    affine=st.booleans(),
    track_running_stats=st.booleans(),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    implementation=st.sampled_from(["fast", "reference"]),
)
def test_train_steps_then_eval_match_torch(
    kind, dtype, momentum, eps, affine, track_running_stats, steps, seed, implementation
):
    torch.manual_seed(seed)
    ours, theirs = twins(
        kind, momentum=momentum, eps=eps, affine=affine, track_running_stats=track_running_stats
    )
    ours.implementation = implementation
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    shapes = PAIRS[kind][2]
    for step in range(steps + 1):
        if step == steps:  # the last pass is an evaluation
            ours.eval(), theirs.eval()
        x = (2 * torch.randn(shapes[step % len(shapes)], dtype=dtype) + 1).requires_grad_()
        y, y_t = ours(x), theirs(x)
        dy = torch.randn_like(y)
        params = [x] + ([ours.weight, ours.bias] if affine else [])
        params_t = [x] + ([theirs.weight, theirs.bias] if affine else [])
        assert_close(y, y_t, **tol)
        for g, g_t in zip(
            torch.autograd.grad(y, params, dy), torch.autograd.grad(y_t, params_t, dy), strict=True
        ):
            assert_close(g, g_t, **tol)
        for key, value in theirs.state_dict().items():
            assert_close(ours.state_dict()[key], value, **tol)


def test_same_state_dict_keys_and_parameters():
    ours, theirs = bnlib.BatchNorm2d(5), nn.BatchNorm2d(5)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in ours.named_buffers()] == [
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("kind", [1, 2, 3])
def test_state_dict_round_trip_both_directions(kind):
    ours_cls, theirs_cls, shapes = PAIRS[kind]
    theirs = theirs_cls(4)
    for _ in range(3):
        theirs(torch.randn(shapes[0]) * 3 + 2)
    ours = ours_cls(4)
    ours.load_state_dict(theirs.state_dict())
    back = theirs_cls(4)
    back.load_state_dict(ours.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
        assert torch.equal(back.state_dict()[key], value)
    assert ours.num_batches_tracked.item() == 3


def test_bias_false_keeps_the_scale_only():
    ours, theirs = bnlib.BatchNorm2d(3, bias=False), nn.BatchNorm2d(3, bias=False)
    assert ours.bias is None and [n for n, _ in ours.named_parameters()] == ["weight"]
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 3, 2, 2)
    assert_close(ours(x), theirs(x))
    assert repr(ours) == repr(theirs)


def test_affine_false_has_no_parameters():
    layer = bnlib.BatchNorm1d(3, affine=False)
    assert list(layer.parameters()) == []
    assert layer.weight is None and layer.bias is None


def test_track_running_stats_false_uses_batch_stats_in_eval():
    layer = bnlib.BatchNorm1d(3, track_running_stats=False).eval()
    assert layer.running_mean is None and layer.num_batches_tracked is None
    x = torch.randn(10, 3) * 4 + 9
    assert_close(layer(x).mean(0), torch.zeros(3), atol=1e-5, rtol=0)


def test_momentum_none_is_cumulative_average():
    layer = bnlib.BatchNorm1d(2, momentum=None)
    batches = [torch.randn(8, 2) * (i + 1) + i for i in range(5)]
    for x in batches:
        layer(x)
    assert_close(layer.running_mean, torch.stack([x.mean(0) for x in batches]).mean(0))
    assert_close(layer.running_var, torch.stack([x.var(0) for x in batches]).mean(0))


def test_eval_mode_does_not_touch_running_stats():
    layer = bnlib.BatchNorm2d(3)
    layer(torch.randn(4, 3, 5, 5) + 3)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.eval()
    layer(torch.randn(4, 3, 5, 5) - 3)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key])


def test_reset_parameters_and_running_stats():
    layer = bnlib.BatchNorm1d(3)
    with torch.no_grad():
        layer.weight.fill_(2)
    layer(torch.randn(5, 3) + 4)
    layer.reset_parameters()
    assert torch.equal(layer.weight, torch.ones(3)) and torch.equal(layer.bias, torch.zeros(3))
    assert torch.equal(layer.running_mean, torch.zeros(3))
    assert torch.equal(layer.running_var, torch.ones(3))
    assert layer.num_batches_tracked.item() == 0


@pytest.mark.parametrize(
    ("layer", "x", "message"),
    [
        (bnlib.BatchNorm1d(3), torch.randn(2, 3, 4, 5), r"expected 2D or 3D input \(got 4D input"),
        (bnlib.BatchNorm2d(3), torch.randn(2, 3, 4), r"expected 4D input \(got 3D input"),
        (bnlib.BatchNorm3d(3), torch.randn(2, 3, 4, 4), r"expected 5D input \(got 4D input"),
    ],
)
def test_wrong_number_of_dimensions(layer, x, message):
    with pytest.raises(ValueError, match=message):
        layer(x)


def test_wrong_channel_count():
    with pytest.raises(RuntimeError, match="num_features=4"):
        bnlib.BatchNorm2d(3)(torch.randn(2, 4, 5, 5))


def test_batch_of_one_in_training_then_fine_in_eval():
    layer = bnlib.BatchNorm1d(3)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        layer(torch.randn(1, 3))
    layer.eval()
    assert layer(torch.randn(1, 3)).shape == (1, 3)


def test_implementation_is_chosen_by_keyword_and_checked():
    layer = bnlib.BatchNorm2d(4, implementation="reference")
    assert layer.implementation == "reference" and bnlib.BatchNorm2d(4).implementation == "fast"
    assert "implementation" not in repr(layer) and set(layer.state_dict()) == set(
        nn.BatchNorm2d(4).state_dict()
    )
    with pytest.raises(ValueError, match="implementation='cuda' is not one of"):
        bnlib.BatchNorm2d(4, implementation="cuda")


# ----------------------------------------------------------------------------------------------
# Edge cases of issue 15: as torch, or a clear error that says what to do


def test_old_checkpoint_without_num_batches_tracked_loads_as_in_torch():
    """Checkpoints of version < 2 (before num_batches_tracked) load; the count is kept."""
    ours, theirs = bnlib.BatchNorm2d(3), nn.BatchNorm2d(3)
    assert (
        ours.state_dict()._metadata[""]["version"] == theirs.state_dict()._metadata[""]["version"]
    )
    old = theirs.state_dict()
    del old["num_batches_tracked"]
    old._metadata[""]["version"] = 1
    for layer in (ours, theirs):
        layer.num_batches_tracked.fill_(7)
        layer.load_state_dict(old)
        assert layer.num_batches_tracked.item() == 7
    old._metadata[""]["version"] = 2  # a current checkpoint missing the key is an error
    for layer in (ours, theirs):
        with pytest.raises(RuntimeError, match="Missing key.*num_batches_tracked"):
            layer.load_state_dict(old)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torch_jit_script_says_what_to_use_instead():
    with pytest.raises(TypeError, match=r"torch\.export\.export.*convert\(model, to='torch'\)"):
        torch.jit.script(nn.Sequential(bnlib.BatchNorm2d(3)))
    for training in (True, False):
        layer = bnlib.BatchNorm2d(3).train(training)
        exported = torch.export.export(layer, (torch.randn(4, 3, 5, 5),)).module()
        x = torch.randn(4, 3, 5, 5)
        reference = nn.BatchNorm2d(3).train(training)
        assert_close(exported(x), reference(x))


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.bool])
def test_integer_input_raises_not_implemented_as_torch(dtype):
    x = torch.ones(4, 3, dtype=dtype)
    with pytest.raises(NotImplementedError) as theirs:
        nn.BatchNorm1d(3)(x)
    with pytest.raises(NotImplementedError, match=r"convert it first, for example with x\.float"):
        bnlib.BatchNorm1d(3)(x)
    assert str(theirs.value).startswith('"batch_norm" not implemented for')


def test_zero_channels_raises_a_clear_error():
    with pytest.raises(IndexError):  # torch: select(): index 0 out of range
        nn.BatchNorm1d(0)(torch.randn(4, 0))
    with pytest.raises(ValueError, match=r"at least one channel, got input of shape \(4, 0\)"):
        bnlib.BatchNorm1d(0)(torch.randn(4, 0))


def test_functional_with_one_running_buffer_raises_as_torch():
    import torch.nn.functional as TF

    x = torch.randn(4, 3) + 5
    for training, error in ((True, ValueError), (False, RuntimeError)):
        for buffers in ((torch.zeros(3), None), (None, torch.ones(3))):
            with pytest.raises(error) as theirs:
                TF.batch_norm(x, *buffers, training=training)
            with pytest.raises(error) as ours:
                bnlib.functional.batch_norm(x, *buffers, training=training)
            assert str(ours.value).startswith(str(theirs.value))


def test_sync_batch_norm_takes_process_group_sixth_as_torch():
    import inspect

    ours = list(inspect.signature(bnlib.SyncBatchNorm.__init__).parameters)
    theirs = list(inspect.signature(nn.SyncBatchNorm.__init__).parameters)
    positional = theirs[: theirs.index("bias")]  # self, num_features, ..., process_group, ...
    assert positional[6] == "process_group" and ours[: len(positional)] == positional
    layer = bnlib.SyncBatchNorm(4, 1e-3, 0.2, True, True, "group", None, torch.float64)
    assert layer.process_group == "group" and layer.eps == 1e-3 and layer.momentum == 0.2
    assert layer.weight.dtype == torch.float64


@pytest.mark.parametrize("dims", [1, 2])
def test_tools_that_look_for_pytorchs_batch_norm_find_bnlibs(dims):
    """update_bn recognises batch norm by PyTorch's base class: it must not skip bnlib's layers
    and leave their statistics stale without a word."""
    from torch.optim.swa_utils import update_bn

    ours = {1: bnlib.BatchNorm1d, 2: bnlib.BatchNorm2d}[dims](3)
    theirs = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims](3)
    assert isinstance(ours, nn.modules.batchnorm._BatchNorm)
    shape = (8, 3) if dims == 1 else (8, 3, 4, 4)
    batches = [(torch.randn(shape) * 3 + 1,) for _ in range(5)]
    update_bn(batches, ours)
    update_bn(batches, theirs)
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 5
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert ours.momentum == theirs.momentum == 0.1  # put back as it was
