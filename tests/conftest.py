"""Shared fixtures: real Fashion-MNIST, loaded once per test session; every test with the
experiments' thread count."""

import pytest
import torch

from bnlib.cache import fixed_threads
from bnlib.data import load_tensors


@pytest.fixture(scope="session")
def fashion_mnist():
    """The first 2,000 training images of the real Fashion-MNIST, as (X, y) tensors."""
    return load_tensors("fashion-mnist", train=True, limit=2000)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _experiment_threads():
    """A direct call computes the sums of a cached one (run with ``THREADS`` threads) in the
    same order, so the tests that compare them can ask for equality."""
    with fixed_threads():
        yield
