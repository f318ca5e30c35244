"""Shared fixtures: real Fashion-MNIST, loaded once per test session."""

import pytest
import torch

from bnlib.data import load_tensors


@pytest.fixture(scope="session")
def fashion_mnist():
    """The first 2,000 training images of the real Fashion-MNIST, as (X, y) tensors."""
    return load_tensors("fashion-mnist", train=True, limit=2000)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
