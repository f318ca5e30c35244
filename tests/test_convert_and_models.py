"""bnlib.convert and bnlib.models: the same network trains the same with either batch norm."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import bnlib
from bnlib.data import make_loader
from bnlib.models import ArticleCNN, PaperMLP
from bnlib.training import set_seed, train_steps


def count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


def forward_backward(model, x, seed=0):
    """Output and parameter gradients, with the same dropout mask every time."""
    model.zero_grad()
    torch.manual_seed(seed)
    y = model(x)
    y.sum().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


def test_convert_cnn_gives_identical_outputs_and_gradients():
    torch_net = ArticleCNN(norm="torch")
    torch_net(torch.randn(8, 1, 28, 28))  # move the running statistics away from their defaults
    ours = bnlib.convert(torch_net)
    assert count(ours, nn.BatchNorm2d) == 0 and count(ours, bnlib.BatchNorm2d) == 2
    assert count(ours, bnlib.BatchNorm1d) == 1
    assert count(torch_net, nn.BatchNorm2d) == 2  # the original is left untouched
    x = torch.randn(16, 1, 28, 28)
    y_t, g_t = forward_backward(torch_net, x)
    y, g = forward_backward(ours, x)
    assert_close(y, y_t, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, g_t, strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-5)
    for key, value in torch_net.state_dict().items():
        assert_close(ours.state_dict()[key], value)
    torch_net.eval(), ours.eval()
    assert_close(ours(x), torch_net(x), rtol=1e-5, atol=1e-5)


def test_convert_back_to_torch_and_keeps_mode_and_requires_grad():
    ours = ArticleCNN(norm="bnlib").eval()
    ours.bn1.weight.requires_grad_(False)
    back = bnlib.convert(ours, to="torch")
    assert count(back, bnlib.BatchNorm2d) == 0 and count(back, nn.BatchNorm2d) == 2
    assert not back.bn1.training and not back.bn1.weight.requires_grad
    x = torch.randn(4, 1, 28, 28)
    assert_close(back(x), ours(x))


def test_convert_a_bare_layer_and_reject_unknown_target():
    layer = nn.BatchNorm1d(3, affine=False, momentum=None)
    twin = bnlib.convert(layer)
    assert type(twin) is bnlib.BatchNorm1d and twin.momentum is None and not twin.affine
    with pytest.raises(ValueError, match="'bnlib' or 'torch'"):
        bnlib.convert(layer, to="tensorflow")


@pytest.mark.parametrize("norm", [None, "torch", "bnlib"])
def test_models_shapes(norm):
    x = torch.randn(3, 1, 28, 28)
    assert ArticleCNN(norm=norm)(x).shape == (3, 10)
    mlp = PaperMLP(norm=norm)
    assert mlp(x).shape == (3, 10)
    assert [z.shape for z in mlp.pre_activations(x)] == [(3, 100)] * 3
    expected = 0 if norm is None else 3
    assert count(mlp, nn.BatchNorm1d) + count(mlp, bnlib.BatchNorm1d) == expected


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="norm must be one of"):
        ArticleCNN(norm="instance")


def test_cnn_trains_the_same_with_torch_and_bnlib_batch_norm(fashion_mnist):
    """20 SGD steps on real Fashion-MNIST from the same seed, in float64 so that what remains is
    rounding (in float32 momentum SGD amplifies last-bit differences to ~1e-3 in 20 steps)."""
    X, y = fashion_mnist
    X = X.double()
    losses = {}
    for norm in ("torch", "bnlib", "bnlib-reference", None):
        set_seed(0)
        model = ArticleCNN(norm=norm and norm.removesuffix("-reference")).double()
        if norm == "bnlib-reference":
            for layer in model.modules():
                if hasattr(layer, "implementation"):
                    layer.implementation = "reference"
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses[norm] = train_steps(model, make_loader(X, y, 32, seed=0), optimizer, 20)
    for ours in ("bnlib", "bnlib-reference"):
        pairs = zip(losses["torch"], losses[ours], strict=True)
        assert max(abs(a - b) for a, b in pairs) < 1e-10, ours
    assert losses["bnlib"][-1] < losses["bnlib"][0]  # it learns
    assert losses[None] != losses["torch"]  # the choice of normalisation does change training


class ScaledBatchNorm(nn.BatchNorm2d):
    """A subclass with its own forward: a plain twin would lose it."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_convert_refuses_a_subclass_clearly():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), ScaledBatchNorm(3))
    with pytest.raises(TypeError, match=r"convert found 1 of type ScaledBatchNorm, a subclass of"):
        bnlib.convert(model)
    with pytest.raises(TypeError, match="Replace it by a plain BatchNorm2d"):
        bnlib.convert(ScaledBatchNorm(3))


def test_train_steps_stops_on_an_empty_or_exhausted_iterable():
    model = PaperMLP(norm="bnlib")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(4, 784), torch.randint(10, (4,))) for _ in range(2)]
    assert len(train_steps(model, batches, optimizer, num_steps=5)) == 5  # a list restarts
    with pytest.raises(ValueError, match="yielded no batch after 0 of 3 steps"):
        train_steps(model, [], optimizer, num_steps=3)
    with pytest.raises(ValueError, match="yielded no batch after 2 of 5 steps.*a generator"):
        train_steps(model, (b for b in batches), optimizer, num_steps=5)
