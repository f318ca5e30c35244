"""PyTorch's own module tests for BatchNorm1d/2d/3d, replayed through bnlib beside torch's layers.

The samples are those of ``torch.testing._internal.common_modules.module_db`` (the inputs behind
PyTorch's ``test/test_modules.py``), and the checks those that file makes: forward, gradcheck,
gradgradcheck, non-contiguous inputs, channels-last, pickling, train/eval, errors, factory
kwargs, repr; each compared with the torch layer built from the same sample.
"""

import copy
import io

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from torch.testing._internal.common_modules import module_db
from torch.testing._internal.common_utils import gradcheck, gradgradcheck

import bnlib

TWINS = {nn.BatchNorm1d: bnlib.BatchNorm1d, nn.BatchNorm2d: bnlib.BatchNorm2d}
TWINS[nn.BatchNorm3d] = bnlib.BatchNorm3d
INFOS = [info for info in module_db if info.module_cls in TWINS]


def samples(dtype, training, requires_grad=True):
    """(id, ModuleInfo, ModuleInput) of every BatchNorm sample of module_db."""
    for info in INFOS:
        inputs = info.module_inputs_func(
            info, device="cpu", dtype=dtype, requires_grad=requires_grad, training=training
        )
        for index, sample in enumerate(inputs):
            yield f"{info.name}-{sample.desc or index}", info, sample


def cases(dtypes):
    return [
        pytest.param(info, sample, training, dtype, id=f"{name}-{mode}-{str(dtype)[6:]}")
        for dtype in dtypes
        for training, mode in ((True, "train"), (False, "eval"))
        for name, info, sample in samples(dtype, training)
    ]


ALL = cases((torch.float32, torch.float64))
FLOAT64 = cases((torch.float64,))
SPATIAL = [case for case in ALL if case.values[1].forward_input.args[0].dim() in (4, 5)]
IMPLEMENTATIONS = pytest.mark.parametrize("implementation", ["fast", "reference"])


def build(info, sample, training, dtype, implementation="fast"):
    """The torch layer of the sample and bnlib's, same configuration, state and mode."""
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    theirs = info.module_cls(*args, **kwargs).to(dtype).train(training)
    ours = TWINS[info.module_cls](*args, **kwargs, implementation=implementation)
    ours = ours.to(dtype).train(training)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def the_input(sample):
    return sample.forward_input.args[0]


def outputs_and_grads(module, x, dy):
    """Output, gradients of the input and the parameters for ``dy``, and the state after."""
    x = x.detach().requires_grad_()
    y = module(x)
    inputs = [x, *module.parameters()]
    grads = torch.autograd.grad(y, inputs, dy, allow_unused=True)
    return y.detach(), grads, {k: v.clone() for k, v in module.state_dict().items()}


def tolerance(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}


@IMPLEMENTATIONS
@pytest.mark.parametrize(("info", "sample", "training", "dtype"), ALL)
def test_forward_and_backward_equal_torch(info, sample, training, dtype, implementation):
    ours, theirs = build(info, sample, training, dtype, implementation)
    x = the_input(sample)
    dy = torch.randn_like(x)
    for _ in range(2):  # the second pass sees the running estimates the first one updated
        y, grads, state = outputs_and_grads(ours, x, dy)
        y_t, grads_t, state_t = outputs_and_grads(theirs, x, dy)
        assert y.dtype == y_t.dtype and (y.stride() == y_t.stride() or y.numel() == 0)
        assert_close(y, y_t, **tolerance(dtype))
        assert_close(grads, grads_t, **tolerance(dtype))
        assert_close(state, state_t, **tolerance(dtype))


@IMPLEMENTATIONS
@pytest.mark.parametrize(("info", "sample", "training", "dtype"), FLOAT64)
def test_gradcheck(info, sample, training, dtype, implementation):
    ours, _ = build(info, sample, training, dtype, implementation)
    inputs = (the_input(sample), *ours.parameters())
    assert gradcheck(lambda x, *params: ours(x), inputs)


@IMPLEMENTATIONS
@pytest.mark.parametrize(("info", "sample", "training", "dtype"), FLOAT64)
def test_gradgradcheck(info, sample, training, dtype, implementation):
    ours, _ = build(info, sample, training, dtype, implementation)
    inputs = (the_input(sample), *ours.parameters())
    assert gradgradcheck(lambda x, *params: ours(x), inputs)


def non_contiguous(t):
    """The same values with strides that skip every other element (test_modules.py's way)."""
    wide = torch.repeat_interleave(t.detach(), 2, dim=-1)
    return wide[..., ::2].requires_grad_(t.requires_grad)


@pytest.mark.parametrize(("info", "sample", "training", "dtype"), ALL)
def test_non_contiguous_input_and_gradient(info, sample, training, dtype):
    ours, theirs = build(info, sample, training, dtype)
    twin = copy.deepcopy(ours)
    x = the_input(sample)
    dy = torch.randn_like(x)
    x_nc, dy_nc = non_contiguous(x), non_contiguous(dy)
    assert x.numel() == 0 or not x_nc.is_contiguous()
    y, grads, state = outputs_and_grads(ours, x_nc, dy_nc)
    y_c, grads_c, state_c = outputs_and_grads(twin, x, dy)
    y_t, grads_t, _ = outputs_and_grads(theirs, x_nc, dy_nc)
    assert_close((y, grads, state), (y_c, grads_c, state_c), **tolerance(dtype))
    assert_close((y, grads), (y_t, grads_t), **tolerance(dtype))
    assert y.stride() == y_t.stride() or y.numel() == 0  # an empty tensor has no layout
    y.view(-1)  # contiguous, as torch's: a view works


@pytest.mark.parametrize(("info", "sample", "training", "dtype"), SPATIAL)
def test_channels_last(info, sample, training, dtype):
    x = the_input(sample)
    layout = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    ours, theirs = build(info, sample, training, dtype)
    ours, theirs = ours.to(memory_format=layout), theirs.to(memory_format=layout)
    x = x.detach().to(memory_format=layout)
    dy = torch.randn_like(x)
    y, grads, state = outputs_and_grads(ours, x, dy)
    y_t, grads_t, state_t = outputs_and_grads(theirs, x, dy)
    assert_close((y, grads, state), (y_t, grads_t, state_t), **tolerance(dtype))
    assert y.is_contiguous(memory_format=layout) == y_t.is_contiguous(memory_format=layout)
    assert grads[0].stride() == grads_t[0].stride() or x.numel() == 0


@pytest.mark.parametrize(("info", "sample", "training", "dtype"), ALL)
def test_save_load(info, sample, training, dtype):
    ours, _ = build(info, sample, training, dtype)
    x = the_input(sample).detach()
    ours(x)  # moves the running estimates
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(ours) and loaded.training == training
    assert_close(loaded.state_dict(), ours.state_dict(), rtol=0, atol=0)
    assert_close(loaded(x), ours(x), rtol=0, atol=0)


@pytest.mark.parametrize(("info", "sample", "training", "dtype"), FLOAT64)
def test_train_and_eval_differ_as_torch(info, sample, training, dtype):
    """train_and_eval_differ: the same state and input give torch's output in both modes."""
    assert info.train_and_eval_differ
    ours, theirs = build(info, sample, training, dtype)
    x = the_input(sample).detach()
    ours(x), theirs(x)
    for mode in (not training, training):
        ours.train(mode), theirs.train(mode)
        assert ours.training == mode
        assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("info", INFOS, ids=[info.name for info in INFOS])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_errors_as_torch(info, training):
    for error in info.module_error_inputs_func(
        info, device="cpu", dtype=torch.float32, requires_grad=False, training=training
    ):
        sample = error.module_error_input
        args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        x = sample.forward_input.args[0]
        theirs = info.module_cls(*args, **kwargs).train(training)
        ours = TWINS[info.module_cls](*args, **kwargs).train(training)
        raised = []
        for layer in (theirs, ours):
            try:
                layer(x)
                raised.append(None)
            except Exception as exception:  # compared below, whatever it is
                raised.append(exception)
        if raised[0] is None:  # eps = 0 in evaluation: both accept it
            assert raised[1] is None
            continue
        assert type(raised[1]) is error.error_type is type(raised[0])
        assert str(raised[1]).startswith(str(raised[0]))
        if training:  # the error module_db expects (in evaluation, only a negative eps raises)
            with pytest.raises(error.error_type, match=error.error_regex):
                ours(x)


@pytest.mark.parametrize(("info", "sample", "training", "dtype"), FLOAT64)
def test_factory_kwargs_and_repr(info, sample, training, dtype):
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    ours = TWINS[info.module_cls](*args, **kwargs, device="cpu", dtype=dtype)
    theirs = info.module_cls(*args, **kwargs, device="cpu", dtype=dtype)
    assert repr(ours) == repr(theirs)
    state, state_t = ours.state_dict(), theirs.state_dict()
    assert list(state) == list(state_t)
    assert all(state[k].dtype == state_t[k].dtype for k in state)


def test_every_sample_of_module_db_is_replayed():
    """22 samples, in two modes and two dtypes: the 88 cases of the issue."""
    assert len(INFOS) == 3 and len(ALL) == 88
