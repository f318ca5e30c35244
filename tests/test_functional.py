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

# the readable reference and the fast path: same contract, same results
IMPLEMENTATIONS = pytest.mark.parametrize(
    "batch_norm",
    [F.batch_norm, functools.partial(F.batch_norm, normalise=fast.FastBatchNormFunction.apply)],
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


def test_eps_zero_gives_zero_mean_unit_variance():
    x = 5 * torch.randn(16, 3, 4, 4, dtype=torch.float64) - 7
    y = F.batch_norm(x, None, None, training=True, eps=0.0)
    assert_close(y.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64))
    assert_close(y.var((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64))


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
        (torch.ones(4, 3, dtype=torch.long), {"training": True}, TypeError, "floating-point"),
        (torch.randn(4), {"training": True}, ValueError, "at least 2 dimensions"),
        (torch.randn(4, 3), {"training": False}, ValueError, "needs running_mean"),
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
def test_fast_function_equals_the_reference_function(shape):
    """Forward, statistics and backward of the two Functions agree to float64 rounding."""
    torch.manual_seed(0)
    x = (5 * torch.randn(shape, dtype=torch.float64) - 3).requires_grad_()
    gamma = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    beta = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    dy = torch.randn(shape, dtype=torch.float64)
    results = []
    for function in (F.BatchNormFunction, fast.FastBatchNormFunction):
        y, mean, var = function.apply(x, gamma, beta, 1e-5)
        results.append((y, mean, var, *torch.autograd.grad(y, (x, gamma, beta), dy)))
    for ours, reference in zip(*results, strict=True):
        assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_channel_sums_match_the_plain_formulas_on_any_layout():
    torch.manual_seed(0)
    a = torch.randn(4, 3, 5, 6, dtype=torch.float64)
    b = torch.randn(4, 3, 5, 6, dtype=torch.float64).to(memory_format=torch.channels_last)
    assert_close(fast.channel_dot(a, b), (a * b).sum((0, 2, 3)))
    assert_close(fast.channel_sum(b), b.sum((0, 2, 3)))
    assert_close(fast.channel_dot(a[:, :, 0, 0], b[:, :, 0, 0]), (a * b)[:, :, 0, 0].sum(0))


def test_compiled_batch_norm_matches_torch():
    """torch.compile of the textbook formula: same outputs, gradients and running statistics."""
    torch.manual_seed(0)
    x = (2 * torch.randn(8, 3, 5, 5) + 1).requires_grad_()
    rm, rv, rm_t, rv_t = torch.zeros(3), torch.ones(3), torch.zeros(3), torch.ones(3)
    y = F.batch_norm(x, rm, rv, training=True, normalise=fast.compiled_textbook())
    y_t = TF.batch_norm(x, rm_t, rv_t, training=True)
    dy = torch.randn_like(y)
    assert_close(y, y_t, rtol=1e-5, atol=1e-5)
    assert_close(torch.autograd.grad(y, x, dy)[0], torch.autograd.grad(y_t, x, dy)[0])
    assert_close((rm, rv), (rm_t, rv_t))
