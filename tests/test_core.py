"""bnlib.core through every implementation, against torch: second derivatives, mixed precision,
autocast, torch.func and forward-mode AD, layouts, empty batches."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.func as tf
from torch import nn
from torch.autograd import grad
from torch.testing import assert_close

import bnlib
from bnlib import core
from bnlib.modules import IMPLEMENTATIONS

EACH = pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))


def twins(cls_ours, cls_theirs, channels=3, dtype=torch.float64, implementation="fast", **kwargs):
    """bnlib's layer and torch's, same configuration and (moved) state."""
    theirs = cls_theirs(channels, **kwargs).to(dtype)
    if theirs.affine:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5), theirs.bias.normal_()
    ours = cls_ours(channels, **kwargs, implementation=implementation).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


# ----------------------------------------------------------------------------------------------
# Second derivatives


@EACH
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_double_backward_equals_torch(implementation, training):
    """The issue's check: grad of |grad of sum(y ** 3)|^2, through x, weight and bias (in
    training, bnlib's saved tensors carried no graph, and gave -36.5 where torch gives -4.70)."""
    ours, theirs = twins(bnlib.BatchNorm1d, nn.BatchNorm1d, implementation=implementation)
    results = []
    for layer in (ours, theirs):
        layer.train(training)
        torch.manual_seed(0)
        x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
        (g,) = grad(layer(x).pow(3).sum(), x, create_graph=True)
        inputs = (x, layer.weight, layer.bias)
        results.append((g, *grad(g.pow(2).sum(), inputs)))
    assert_close(results[0], results[1])


@EACH
def test_gradgradcheck_in_training(implementation):
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(2, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(2, dtype=torch.float64, requires_grad=True)
    normalise = IMPLEMENTATIONS[implementation]

    def f(x, gamma, beta):
        return bnlib.functional.batch_norm(x, None, None, gamma, beta, True, normalise=normalise)

    assert torch.autograd.gradgradcheck(f, (x, gamma, beta))


# ----------------------------------------------------------------------------------------------
# Mixed precision


@EACH
def test_float16_does_not_overflow(implementation):
    """65,536 values per channel: a float16 sum would be inf, the channel 0 and running_var inf."""
    torch.manual_seed(0)
    ours, theirs = bnlib.BatchNorm2d(4, implementation=implementation).half(), nn.BatchNorm2d(4)
    theirs = theirs.half()
    x = (2 * torch.randn(64, 4, 32, 32) + 3).half()
    y, y_t = ours(x), theirs(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert_close(y, y_t, rtol=0, atol=8e-3)  # two float16 ulps at |y| ~ 4
    assert ours.running_var.dtype == torch.float16
    assert_close(ours.running_var, theirs.running_var, rtol=2e-3, atol=0)
    assert_close(ours.running_mean, theirs.running_mean, rtol=2e-3, atol=0)


@EACH
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_into_a_float32_layer(implementation, dtype):
    """What autocast gives after a convolution: the output in the input's dtype, the running
    estimates in the layer's, a backward that works; all as torch's."""
    torch.manual_seed(0)
    ours, theirs = twins(bnlib.BatchNorm2d, nn.BatchNorm2d, dtype=torch.float32)
    ours.implementation = implementation
    x = torch.randn(8, 3, 5, 5).to(dtype).requires_grad_()
    for training in (True, False):
        ours.train(training), theirs.train(training)
        y, y_t = ours(x), theirs(x)
        assert y.dtype == y_t.dtype == dtype
        dy = torch.randn_like(y)
        grads = grad(y, (x, ours.weight, ours.bias), dy)
        grads_t = grad(y_t, (x, theirs.weight, theirs.bias), dy)
        assert [g.dtype for g in grads] == [g.dtype for g in grads_t]
        ulp = {"rtol": 0, "atol": 2 * torch.finfo(dtype).eps * 4}
        assert_close(y, y_t, **ulp)
        assert_close(grads[0], grads_t[0], **ulp)
        assert_close(grads[1:], grads_t[1:], rtol=1e-4, atol=1e-4)
    assert ours.running_var.dtype == torch.float32
    assert_close(ours.state_dict(), theirs.state_dict())


@EACH
def test_autocast_keeps_float32_accuracy(implementation):
    """Under CPU autocast batch norm runs in its input's dtype, as PyTorch's: a float32 input
    keeps float32 accuracy (vecdot lowered to bfloat16 gave errors of 4e-3)."""
    torch.manual_seed(0)
    x = (torch.randn(16, 3, 8, 8) * 3 + 1).requires_grad_()
    reference = nn.BatchNorm2d(3).double()(x.double())
    ours = bnlib.BatchNorm2d(3, implementation=implementation)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
        y_t = nn.BatchNorm2d(3)(x)
        (dx,) = grad(y.sum() + y.pow(2).sum(), x)
        (dx_t,) = grad(y_t.sum() + y_t.pow(2).sum(), x)
    assert y.dtype == torch.float32
    error, error_t = (y.double() - reference).abs().max(), (y_t.double() - reference).abs().max()
    assert error < max(4 * error_t, 2e-6)
    assert_close(dx, dx_t, rtol=1e-4, atol=1e-5)


def test_channel_sums_accumulate_in_float32():
    x = torch.ones(2, 3, 200, 200, dtype=torch.float16)  # 80,000 per channel > 65,504
    assert core.channel_sum(x).dtype == torch.float32
    assert_close(core.channel_sum(x), torch.full((3,), 80000.0))
    assert_close(core.channel_dot(x, x), torch.full((3,), 80000.0))
    assert core.accumulation_dtype(torch.bfloat16) == torch.float32
    assert core.accumulation_dtype(torch.float64) == torch.float64


# ----------------------------------------------------------------------------------------------
# torch.func and forward-mode AD


def transforms(x, tangent, batch):
    """The calls of torch.func and forward-mode AD, each ``layer -> tensor``."""

    def forward_ad(layer):
        with fwAD.dual_level():
            return fwAD.unpack_dual(layer(fwAD.make_dual(x, tangent))).tangent

    def cubed(layer):
        return lambda x: layer(x).pow(3).sum()

    return {
        "vmap": lambda layer: tf.vmap(layer)(batch),
        "grad": lambda layer: tf.grad(cubed(layer))(x),
        "jvp": lambda layer: tf.jvp(layer, (x,), (tangent,))[1],
        "jacrev": lambda layer: tf.jacrev(layer)(x),
        "jacfwd": lambda layer: tf.jacfwd(layer)(x),
        "vmap(grad)": lambda layer: tf.vmap(tf.grad(cubed(layer)))(batch),
        "hessian": lambda layer: tf.hessian(cubed(layer))(x[:, :, :1]),
        "forward_ad": forward_ad,
        "grad of params": lambda layer: tf.grad(
            lambda p: tf.functional_call(layer, p, (x,)).pow(3).sum()
        )(dict(layer.named_parameters()))["weight"],
    }


@EACH
@pytest.mark.parametrize(
    ("training", "track"),
    [(True, False), (False, True), (False, False)],
    ids=["batch stats", "eval", "eval without running stats"],
)
def test_torch_func_equals_torch(implementation, training, track):
    ours, theirs = twins(
        bnlib.BatchNorm1d, nn.BatchNorm1d, track_running_stats=track, implementation=implementation
    )
    ours.train(training), theirs.train(training)
    torch.manual_seed(0)
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    calls = transforms(x, torch.randn_like(x), torch.randn(2, 5, 3, 2, dtype=torch.float64))
    for name, call in calls.items():
        assert_close(call(ours), call(theirs), msg=name)


@EACH
def test_torch_func_with_running_stats_in_training_raises_as_torch(implementation):
    """Updating running estimates under a transform: torch raises, so does bnlib; forward-mode
    AD works in both, and updates the running estimates alike."""
    ours, theirs = twins(bnlib.BatchNorm1d, nn.BatchNorm1d, implementation=implementation)
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    calls = transforms(x, torch.randn_like(x), torch.randn(2, 5, 3, 2, dtype=torch.float64))
    forward_ad = calls.pop("forward_ad")
    for name, call in calls.items():
        with pytest.raises(RuntimeError) as theirs_error:
            call(theirs)
        with pytest.raises(type(theirs_error.value)) as ours_error:
            call(ours)
        if name == "vmap":
            assert "track_running_stats=False" in str(ours_error.value)
            assert "replace_all_batch_norm_modules_" in str(ours_error.value)
    assert_close(forward_ad(ours), forward_ad(theirs))
    assert_close(ours.running_var, theirs.running_var)


# ----------------------------------------------------------------------------------------------
# Layouts and empty inputs


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(3, 6, 5, 4).permute(1, 3, 2, 0),  # a permutation: contiguous out
        lambda: torch.randn(5, 8).t(),
        lambda: torch.randn(6, 4, 3, 5).to(memory_format=torch.channels_last),  # kept
        lambda: torch.randn(2, 4, 3, 2, 5).to(memory_format=torch.channels_last_3d),
    ],
    ids=["permuted 4D", "transposed 2D", "channels-last", "channels-last 3D"],
)
def test_output_layout_as_torch(make, training):
    x = make()
    cls = {2: (bnlib.BatchNorm1d, nn.BatchNorm1d), 4: (bnlib.BatchNorm2d, nn.BatchNorm2d)}
    cls[5] = (bnlib.BatchNorm3d, nn.BatchNorm3d)
    ours, theirs = twins(*cls[x.dim()], channels=x.shape[1], dtype=torch.float32)
    ours.train(training), theirs.train(training)
    y, y_t = ours(x), theirs(x)
    assert y.stride() == y_t.stride()
    assert_close(y, y_t, rtol=1e-5, atol=1e-5)
    if y_t.is_contiguous():
        y.view(-1)


@pytest.mark.parametrize("shape", [(0, 5, 9), (0, 5), (4, 5, 0)])
def test_empty_batch_as_torch(shape):
    """N = 0 (a detection head without proposals): an empty output, zero parameter gradients,
    running estimates unchanged but the batch counted, as torch."""
    ours, theirs = twins(bnlib.BatchNorm1d, nn.BatchNorm1d, channels=5, momentum=None)
    results = []
    for layer in (ours, theirs):
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        y = layer(x)
        grads = grad(y.sum(), (x, layer.weight, layer.bias))
        results.append((y, grads, layer.state_dict()))
    assert results[0][0].shape == shape
    assert_close(results[0], results[1])
    assert ours.num_batches_tracked.item() == 1


def test_functional_empty_batch():
    rm, rv = torch.full((3,), 2.0), torch.full((3,), 3.0)
    y = bnlib.functional.batch_norm(torch.randn(0, 3), rm, rv, training=True)
    assert y.shape == (0, 3) and (rm == 2).all() and (rv == 3).all()
