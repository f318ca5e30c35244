"""bnlib.functional and bnlib.fast against torch.nn.functional.batch_norm, autograd, gradcheck."""

import functools

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from bnlib import fast
from bnlib import functional as F
from bnlib.modules import IMPLEMENTATIONS as IMPLEMENTATIONS_

# the readable reference and the fast path: same contract, same results
IMPLEMENTATIONS = pytest.mark.parametrize(
    "batch_norm",
    [functools.partial(F.batch_norm, normalise=IMPLEMENTATIONS_[n]) for n in ("reference", "fast")],
    ids=["reference", "fast"],
)

SHAPES = [(4, 3), (5, 2, 7), (3, 4, 5, 6), (2, 3, 2, 3, 4)]


def reference_batch_norm(x, gamma, beta, eps):
    """Batch norm composed of plain autograd ops, the formula as written in the paper."""
    dims = [0, *range(2, x.dim())]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    return gamma.view(shape) * (x - mean) / torch.sqrt(var + eps) + beta.view(shape)


@IMPLEMENTATIONS
@settings(max_examples=60, deadline=None)
@given(
    shape_index=st.integers(0, len(SHAPES) - 1),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    training=st.booleans(),
    momentum=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    eps=st.sampled_from([1e-5, 1e-3, 0.1]),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_torch_functional(
    batch_norm, shape_index, dtype, training, momentum, eps, affine, seed
):
    torch.manual_seed(seed)
    shape = SHAPES[shape_index]
    C = shape[1]
    x = (3 * torch.randn(shape, dtype=dtype) + 2).requires_grad_()
    w = torch.randn(C, dtype=dtype, requires_grad=True) if affine else None
    b = torch.randn(C, dtype=dtype, requires_grad=True) if affine else None
    rm, rv = torch.randn(C, dtype=dtype), torch.rand(C, dtype=dtype) + 0.5
    rm_t, rv_t = rm.clone(), rv.clone()

    y = batch_norm(x, rm, rv, w, b, training, momentum, eps)
    y_t = TF.batch_norm(x, rm_t, rv_t, w, b, training, momentum, eps)
    dy = torch.randn_like(y)
    inputs = [x] + ([w, b] if affine else [])
    grads = torch.autograd.grad(y, inputs, dy)
    grads_t = torch.autograd.grad(y_t, inputs, dy)

    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    assert_close(y, y_t, **tol)
    for g, g_t in zip(grads, grads_t, strict=True):
        assert_close(g, g_t, **tol)
    assert_close(rm, rm_t, **tol)
    assert_close(rv, rv_t, **tol)


@pytest.mark.parametrize("function", [F.BatchNormFunction, fast.FastBatchNormFunction])
def test_gradcheck_function(function):
    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(3, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, g, b: function.apply(x, g, b, 1e-5)[0], (x, gamma, beta)
    )


def test_gradcheck_eval_mode():
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(4, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(4, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.1
    assert torch.autograd.gradcheck(
        lambda x, g, b: F.batch_norm(x, rm, rv, g, b, training=False), (x, gamma, beta)
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_staged_equals_closed_form_equals_autograd(shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    C = shape[1]
    gamma = torch.randn(C, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(C, dtype=torch.float64, requires_grad=True)
    eps = 1e-3
    y_ref = reference_batch_norm(x, gamma, beta, eps)
    dy = torch.randn_like(y_ref)
    by_autograd = torch.autograd.grad(y_ref, (x, gamma, beta), dy)

    y, _, cache = F.batch_norm_forward(x.detach(), gamma.detach(), beta.detach(), eps)
    closed = F.batch_norm_backward(dy, cache)
    staged = F.batch_norm_backward_staged(dy, x.detach(), gamma.detach(), eps)

    assert_close(y, y_ref.detach())
    for a, s, c in zip(by_autograd, staged, closed, strict=True):
        assert_close(s, a)
        assert_close(c, a)


def test_tiny_eps_gives_zero_mean_unit_variance():
    x = 5 * torch.randn(16, 3, 4, 4, dtype=torch.float64) - 7
    y = F.batch_norm(x, None, None, training=True, eps=1e-12)
    assert_close(y.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64))
    assert_close(y.var((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize(("eps", "training"), [(0.0, True), (-1.0, True), (-1.0, False)])
def test_eps_as_torch(eps, training):
    """eps = 0 is refused in training (a constant channel would divide by 0), as by torch;
    a negative eps always; eps = 0 in evaluation is allowed and equal to torch's."""
    x, rm, rv = torch.randn(4, 3), torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match="eps must be") as theirs:
        TF.batch_norm(x, rm, rv, training=training, eps=eps)
    with pytest.raises(ValueError) as ours:
        F.batch_norm(x, rm, rv, training=training, eps=eps)
    assert str(ours.value).startswith(str(theirs.value))
    assert_close(F.batch_norm(x, rm, rv, eps=0.0), TF.batch_norm(x, rm, rv, eps=0.0))


def test_momentum_one_makes_running_stats_the_batch():
    x = 2 * torch.randn(10, 4, 3, dtype=torch.float64) + 1
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    F.batch_norm(x, rm, rv, training=True, momentum=1.0)
    assert_close(rm, x.mean((0, 2)))
    assert_close(rv, x.var((0, 2), unbiased=True))  # unbiased in the running estimate


def test_eval_ignores_the_rest_of_the_batch():
    rm, rv = torch.randn(3), torch.rand(3) + 0.5
    x = torch.randn(8, 3, 5, 5)
    alone = F.batch_norm(x[:1], rm, rv, training=False)
    in_batch = F.batch_norm(x, rm, rv, training=False)[:1]
    assert_close(alone, in_batch)


def test_training_output_depends_on_the_batch():
    x = torch.randn(8, 3)
    first_half = F.batch_norm(x[:4], None, None, training=True)
    whole = F.batch_norm(x, None, None, training=True)[:4]
    assert (first_half - whole).abs().max() > 1e-3


@IMPLEMENTATIONS
def test_stable_variance_on_offset_float32(batch_norm):
    """Mean 1e4, std 1e-2 in float32: at least as accurate as PyTorch against float64."""
    x = (1e4 + 1e-2 * torch.randn(64, 8, 6, 6, dtype=torch.float64)).float()
    x64 = x.double()
    ref_mean, ref_var = x64.mean((0, 2, 3)), x64.var((0, 2, 3), unbiased=True)
    ref_y = TF.batch_norm(x64, None, None, training=True)

    ours_rm, ours_rv = torch.zeros(8), torch.ones(8)
    theirs_rm, theirs_rv = torch.zeros(8), torch.ones(8)
    y = batch_norm(x, ours_rm, ours_rv, training=True, momentum=1.0)
    y_t = TF.batch_norm(x, theirs_rm, theirs_rv, training=True, momentum=1.0)

    def error(a, ref):
        return ((a.double() - ref).abs() / ref.abs().clamp_min(1e-12)).max().item()

    assert error(ours_rv, ref_var) <= max(error(theirs_rv, ref_var), 1e-4)
    assert error(ours_rm, ref_mean) <= max(error(theirs_rm, ref_mean), 1e-7)
    assert (y.double() - ref_y).abs().max() <= (y_t.double() - ref_y).abs().max() + 1e-3
    # centring on (x - shift) - residual keeps x_hat exact to float32 precision
    assert (y.double() - ref_y).abs().max() < 1e-4
    # the naive one-pass formula fails on the same data: why batch_stats is written as it is
    _, naive_var = F.naive_batch_stats(x)
    assert error(naive_var, x64.var((0, 2, 3), unbiased=False)) > 0.5
    _, naive_var64 = F.naive_batch_stats(x64)  # the formula itself is right: fine in float64
    assert error(naive_var64, x64.var((0, 2, 3), unbiased=False)) < 1e-3


@pytest.mark.parametrize(
    ("x", "kwargs", "error", "message"),
    [
        (
            torch.randn(1, 3),
            {"training": True},
            ValueError,
            "Expected more than 1 value per channel",
        ),
        (torch.randn(1, 3, 1, 1), {"training": True}, ValueError, "drop_last=True"),
        (
            torch.ones(4, 3, dtype=torch.long),
            {"training": True},
            NotImplementedError,
            "not implemented for torch.int64: batch norm needs a floating-point input",
        ),
        (torch.randn(4), {"training": True}, ValueError, "at least 2 dimensions"),
        (
            torch.randn(4, 3),
            {"training": False},
            RuntimeError,
            "running_mean must be defined in evaluation mode",
        ),
        (
            torch.randn(4, 3),
            {"training": True, "weight": torch.ones(5)},
            RuntimeError,
            "weight should contain 3 elements not 5",
        ),
    ],
)
@IMPLEMENTATIONS
def test_bad_input_raises_clear_error(batch_norm, x, kwargs, error, message):
    with pytest.raises(error, match=message):
        batch_norm(x, None, None, **kwargs)


def test_wrong_channel_count_in_running_stats():
    with pytest.raises(RuntimeError, match="running_mean should contain 3 elements not 4"):
        F.batch_norm(torch.randn(4, 3), torch.zeros(4), torch.ones(4), training=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_implementations_agree(shape):
    """Forward, statistics and backward of the three implementations agree to float64 rounding."""
    torch.manual_seed(0)
    x = (5 * torch.randn(shape, dtype=torch.float64) - 3).requires_grad_()
    gamma = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    beta = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    dy = torch.randn(shape, dtype=torch.float64)
    results = []
    for normalise in IMPLEMENTATIONS_.values():
        y, mean, var = normalise(x, gamma, beta, 1e-5)
        assert not mean.requires_grad and not var.requires_grad
        results.append((y, mean, var, *torch.autograd.grad(y, (x, gamma, beta), dy)))
    for other in results[1:]:
        for ours, reference in zip(other, results[0], strict=True):
            assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_channel_sums_match_the_plain_formulas_on_any_layout():
    torch.manual_seed(0)
    a = torch.randn(4, 3, 5, 6, dtype=torch.float64)
    b = torch.randn(4, 3, 5, 6, dtype=torch.float64).to(memory_format=torch.channels_last)
    assert_close(fast.channel_dot(a, b), (a * b).sum((0, 2, 3)))
    assert_close(fast.channel_sum(b), b.sum((0, 2, 3)))
    assert_close(fast.channel_dot(a[:, :, 0, 0], b[:, :, 0, 0]), (a * b)[:, :, 0, 0].sum(0))


def test_compiled_batch_norm_matches_torch():
    """torch.compile'd kernels: same outputs, gradients and running statistics."""
    torch.manual_seed(0)
    x = (2 * torch.randn(8, 3, 5, 5) + 1).requires_grad_()
    rm, rv, rm_t, rv_t = torch.zeros(3), torch.ones(3), torch.zeros(3), torch.ones(3)
    y = F.batch_norm(x, rm, rv, training=True, normalise=IMPLEMENTATIONS_["compiled"])
    y_t = TF.batch_norm(x, rm_t, rv_t, training=True)
    dy = torch.randn_like(y)
    assert_close(y, y_t, rtol=1e-5, atol=1e-5)
    assert_close(torch.autograd.grad(y, x, dy)[0], torch.autograd.grad(y_t, x, dy)[0])
    assert_close((rm, rv), (rm_t, rv_t))


# ----------------------------------------------------------------------------------------------
# The differential tests beyond first order in float32/64: second derivatives, float16 and
# bfloat16, autocast, vmap


def inputs_for(shape, dtype, affine, seed):
    torch.manual_seed(seed)
    x = (3 * torch.randn(shape, dtype=torch.float64) + 2).to(dtype).requires_grad_()
    C = shape[1]
    w = torch.rand(C, dtype=torch.float64).add(0.5).to(dtype).requires_grad_() if affine else None
    b = torch.randn(C, dtype=torch.float64).to(dtype).requires_grad_() if affine else None
    return x, w, b


@IMPLEMENTATIONS
@settings(max_examples=25, deadline=None)
@given(
    shape_index=st.integers(0, len(SHAPES) - 1),
    training=st.booleans(),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_double_backward_matches_torch(batch_norm, shape_index, training, affine, seed):
    x, w, b = inputs_for(SHAPES[shape_index], torch.float64, affine, seed)
    C = x.shape[1]
    rm, rv = torch.randn(C, dtype=torch.float64), torch.rand(C, dtype=torch.float64) + 0.5
    inputs = [x] + ([w, b] if affine else [])
    results = []
    for function in (batch_norm, TF.batch_norm):
        y = function(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-3)
        first = torch.autograd.grad(y.pow(3).sum(), inputs, create_graph=True)
        penalty = sum(g.pow(2).sum() for g in first)
        results.append((first, torch.autograd.grad(penalty, inputs, allow_unused=True)))
    assert_close(results[0], results[1], rtol=1e-9, atol=1e-9)


@IMPLEMENTATIONS
@settings(max_examples=30, deadline=None)
@given(
    shape_index=st.integers(0, len(SHAPES) - 1),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    layer_dtype=st.sampled_from(["input", "float32"]),
    training=st.booleans(),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_low_precision_matches_torch(
    batch_norm, shape_index, dtype, layer_dtype, training, affine, seed
):
    """float16 and bfloat16 inputs, in a layer of the same dtype or float32 (autocast's case):
    as torch, to a few units of the dtype's precision."""
    x, w, b = inputs_for(SHAPES[shape_index], dtype, affine, seed)
    param_dtype = dtype if layer_dtype == "input" else torch.float32
    if affine:
        w, b = (t.detach().to(param_dtype).requires_grad_() for t in (w, b))
    C = x.shape[1]
    rm = torch.randn(C, dtype=torch.float64).to(param_dtype)
    rv = (torch.rand(C, dtype=torch.float64) + 0.5).to(param_dtype)
    rm_t, rv_t = rm.clone(), rv.clone()
    y = batch_norm(x, rm, rv, w, b, training, 0.1, 1e-3)
    y_t = TF.batch_norm(x, rm_t, rv_t, w, b, training, 0.1, 1e-3)
    assert y.dtype == y_t.dtype == dtype and rm.dtype == rm_t.dtype == param_dtype
    dy = torch.randn_like(y)
    inputs = [x] + ([w, b] if affine else [])
    grads = torch.autograd.grad(y, inputs, dy)
    grads_t = torch.autograd.grad(y_t, inputs, dy)
    eps = torch.finfo(dtype).eps
    scale = max(y_t.abs().max().item(), 1.0)
    assert_close(y, y_t, rtol=4 * eps, atol=4 * eps * scale)
    for g, g_t in zip(grads, grads_t, strict=True):
        g_scale = max(g_t.abs().max().item(), 1.0)
        assert_close(g, g_t, rtol=8 * eps, atol=8 * eps * g_scale)
    assert_close((rm, rv), (rm_t, rv_t), rtol=4 * eps, atol=4 * eps)


@IMPLEMENTATIONS
@settings(max_examples=20, deadline=None)
@given(
    shape_index=st.integers(0, len(SHAPES) - 1),
    training=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_autocast_matches_torch(batch_norm, shape_index, training, seed):
    """Under CPU autocast: float32 in, float32 accuracy out, forward and backward, as torch."""
    x, w, b = inputs_for(SHAPES[shape_index], torch.float32, True, seed)
    C = x.shape[1]
    rm, rv = torch.randn(C), torch.rand(C) + 0.5
    outputs = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for function in (batch_norm, TF.batch_norm):
            y = function(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-3)
            outputs.append((y, *torch.autograd.grad(y.pow(2).sum(), (x, w, b))))
    assert outputs[0][0].dtype == torch.float32
    assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)


@IMPLEMENTATIONS
@settings(max_examples=20, deadline=None)
@given(
    shape_index=st.integers(0, len(SHAPES) - 1),
    training=st.booleans(),
    in_dim=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**16),
)
def test_vmap_matches_torch(batch_norm, shape_index, training, in_dim, seed):
    """A batch of independent problems through torch.func.vmap: batch statistics (no running
    buffers) in training, the running ones in evaluation; values and per-problem gradients."""
    x, w, b = inputs_for(SHAPES[shape_index], torch.float64, True, seed)
    problems = torch.stack([x.detach(), 2 * x.detach() - 1, x.detach() ** 2], dim=in_dim)
    C = x.shape[1]
    rm, rv = torch.randn(C, dtype=torch.float64), torch.rand(C, dtype=torch.float64) + 0.5
    buffers = (None, None) if training else (rm, rv)
    results = []
    for function in (batch_norm, TF.batch_norm):

        def f(x, function=function):
            return function(x, *buffers, w.detach(), b.detach(), training, 0.1, 1e-3)

        def loss(x, f=f):
            return f(x).pow(3).sum()

        y = torch.func.vmap(f, in_dims=in_dim)(problems)
        per_problem = torch.func.vmap(torch.func.grad(loss), in_dims=in_dim)(problems)
        results.append((y, per_problem))
    assert_close(results[0], results[1])
