"""bnlib.stats: the t interval and the paired difference, against values computed by hand."""

import math
import statistics

import pytest

from bnlib.stats import Interval, paired, summarize, t_quantile


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.706), (4, 2.776), (9, 2.262), (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980)],
)
def test_t_quantile_matches_the_tables(df, expected):
    assert t_quantile(df) == pytest.approx(expected, abs=1.5e-3)


def test_t_quantile_falls_towards_the_normal_one():
    values = [t_quantile(df) for df in range(1, 200)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == pytest.approx(1.972, abs=1e-3)  # t(0.975, 199)
    assert t_quantile(10_000) == pytest.approx(1.95996, abs=1e-3)
    with pytest.raises(ValueError, match="at least 1 degree of freedom"):
        t_quantile(0)


def test_summarize_gives_the_mean_the_spread_and_the_t_interval():
    values = [0.81, 0.84, 0.79, 0.83, 0.80]
    interval = summarize(values)
    mean, std = statistics.mean(values), statistics.stdev(values)
    half = 2.776 * std / math.sqrt(5)
    assert interval.n == 5 and interval.values == tuple(values)
    assert interval.mean == pytest.approx(mean) and interval.std == pytest.approx(std)
    assert interval.low == pytest.approx(mean - half) and interval.high == pytest.approx(
        mean + half
    )


def test_summarize_refuses_one_value_and_non_finite_ones():
    with pytest.raises(ValueError, match="at least 2 seeds, got 1"):
        summarize([0.8])
    with pytest.raises(ValueError, match="not finite.*diverged"):
        summarize([0.8, float("nan")])


def test_paired_differences_remove_what_the_arms_share():
    base = [0.70, 0.80, 0.90, 0.75, 0.85]  # the seeds differ a lot...
    better = [b + 0.01 + 0.001 * i for i, b in enumerate(base)]  # ...the effect is steady
    difference = paired(better, base)
    assert difference.above_zero and not difference.below_zero and difference.excludes_zero
    assert difference.mean == pytest.approx(0.012)
    unpaired = summarize(better).low - summarize(base).high
    assert unpaired < 0  # compared arm against arm, the intervals overlap
    with pytest.raises(ValueError, match="same seeds, got 5 values against 4"):
        paired(better, base[:4])


def test_interval_predicates_and_scaling():
    interval = Interval(3, 0.01, 0.005, -0.002, 0.022, (0.005, 0.01, 0.015))
    assert not interval.excludes_zero and interval.within(0.03) and not interval.within(0.02)
    points = interval.scaled(100)
    assert (points.mean, points.low, points.high) == pytest.approx((1.0, -0.2, 2.2))
    assert points.values == pytest.approx((0.5, 1.0, 1.5)) and points.std == pytest.approx(0.5)
    flipped = interval.scaled(-1)
    assert flipped.low == pytest.approx(-0.022) and flipped.high == pytest.approx(0.002)
    assert "95% interval" in str(interval) and "n=3" in str(interval)
