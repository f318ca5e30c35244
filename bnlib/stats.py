"""What several seeds support: the mean of a measurement, its spread and a 95 % interval.

One training run is an anecdote: another seed, or the same seed on another CPU (other kernels,
other rounding, amplified by training), gives another number. A claim about training therefore
compares arms over seeds. ``summarize`` turns one arm's values into an ``Interval``; ``paired``
does the same for the per-seed differences of two arms that share their seeds (same initial
weights, same mini-batches), which removes the part of the variation the two arms have in common.

The interval is Student's t interval for the mean, ``mean +- t(0.975, n - 1) * std / sqrt(n)``:
it assumes the seeds are independent draws, nothing about the sign or the size of the effect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Interval", "summarize", "paired", "t_quantile"]

# t(0.975, df) for df = 1..30 (standard tables); beyond, a Cornish-Fisher expansion (below).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959964


def t_quantile(df: int) -> float:
    """The 97.5th percentile of Student's t with ``df`` degrees of freedom: the factor of a
    two-sided 95 % interval. Exact to the tables' three decimals."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (2 values), got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """A measurement over ``n`` seeds: its ``mean``, standard deviation ``std`` (n - 1 in the
    denominator), and the 95 % interval ``[low, high]`` of the mean. ``values`` keeps the seeds'
    own numbers, in seed order."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    values: tuple[float, ...]

    @property
    def above_zero(self) -> bool:
        """The whole interval is above zero: the seeds support a positive mean."""
        return self.low > 0

    @property
    def below_zero(self) -> bool:
        """The whole interval is below zero: the seeds support a negative mean."""
        return self.high < 0

    @property
    def excludes_zero(self) -> bool:
        return self.above_zero or self.below_zero

    def within(self, bound: float) -> bool:
        """The whole interval lies in ``(-bound, bound)``: the seeds support a mean smaller than
        ``bound`` in size (an effect, if any, below that size)."""
        return -bound < self.low and self.high < bound

    def scaled(self, factor: float) -> Interval:
        """The same interval in other units, for example ``100`` for percentage points."""
        low, high = sorted((factor * self.low, factor * self.high))
        return Interval(
            self.n,
            factor * self.mean,
            abs(factor) * self.std,
            low,
            high,
            tuple(factor * v for v in self.values),
        )

    def __str__(self) -> str:
        return f"{self.mean:.3g}, 95% interval [{self.low:.3g}, {self.high:.3g}], n={self.n}"


def summarize(values: Sequence[float]) -> Interval:
    """The mean of ``values`` (one per seed), their spread, and the 95 % t interval of the mean.

    Raises:
        ValueError: fewer than two values (no spread, no interval), or a value that is not finite.
    """
    values = tuple(float(v) for v in values)
    if len(values) < 2:
        raise ValueError(
            f"an interval needs the values of at least 2 seeds, got {len(values)}: "
            "run the configuration over more seeds (bnlib.experiments.Seeds)"
        )
    if not all(math.isfinite(v) for v in values):
        raise ValueError(
            f"cannot summarise values that are not finite: {values}; "
            "a diverged run has no final accuracy, count divergences separately"
        )
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half, values)


def paired(a: Sequence[float], b: Sequence[float]) -> Interval:
    """The interval of the mean of ``a[i] - b[i]``: two arms measured on the same seeds.

    Raises:
        ValueError: the arms have different numbers of seeds (they cannot be paired).
    """
    if len(a) != len(b):
        raise ValueError(f"paired arms need the same seeds, got {len(a)} values against {len(b)}")
    return summarize([x - y for x, y in zip(a, b, strict=True)])
