"""The seeds of the book, and how to move them all at once.

Every seed the book uses (initial weights, order of the mini-batches, dropout masks, probes) is
``seed(i)``: the book's own number ``i`` plus ``BNLIB_SEED_OFFSET`` (an integer, 0 by default).
Rebuilding with another offset draws every random number afresh, which is how ``make
robustness`` checks that the book's verdicts are not the luck of one draw.
"""

from __future__ import annotations

import os
import random

import torch

__all__ = ["OFFSET_VARIABLE", "seed_offset", "seed", "set_seed"]

OFFSET_VARIABLE = "BNLIB_SEED_OFFSET"


def seed_offset() -> int:
    """``$BNLIB_SEED_OFFSET`` as an integer, 0 when unset.

    Raises:
        ValueError: the variable is set to something that is not a non-negative integer.
    """
    text = os.environ.get(OFFSET_VARIABLE, "").strip()
    if not text:
        return 0
    try:
        offset = int(text)
    except ValueError:
        raise ValueError(
            f"{OFFSET_VARIABLE} must be a non-negative integer (it shifts every seed of the "
            f"book), got {text!r}; unset it for the book's own seeds"
        ) from None
    if offset < 0:
        raise ValueError(f"{OFFSET_VARIABLE} must be a non-negative integer, got {offset}")
    return offset


def seed(i: int = 0) -> int:
    """The book's seed number ``i``, shifted by ``BNLIB_SEED_OFFSET``."""
    return seed_offset() + i


def set_seed(value: int) -> None:
    """Seed Python's and PyTorch's generators with ``value`` (already shifted, as ``seed()``
    returns it), so a run can be repeated exactly."""
    random.seed(value)
    torch.manual_seed(value)
