"""Numbers into the page: gluing a whole summary with one call.

A page quotes what its experiments measured through myst-nb's ``glue``. An interval over seeds
is five numbers (mean, bounds, spread, count); ``glue_interval`` glues them under one name, so
the prose writes ``{glue:text}`gain:.1f``` points (95 % interval ``{glue:text}`gain_low:.1f``` to
``{glue:text}`gain_high:.1f```, ``{glue:text}`gain_n``` seeds).
"""

from __future__ import annotations

from collections.abc import Mapping

from bnlib.stats import Interval

__all__ = ["glue_interval", "glue_values"]


def _glue(name: str, value) -> None:
    from myst_nb import glue  # imported here: bnlib works without the book's tools

    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()  # a NumPy or PyTorch scalar: its plain number, so formats apply
    glue(name, value, display=False)


def glue_interval(name: str, interval: Interval, scale: float = 1.0) -> Interval:
    """Glue ``interval`` (times ``scale``: 100 for percentage points) as ``name`` (the mean),
    ``name_low``, ``name_high``, ``name_std``, ``name_n``, ``name_min`` and ``name_max`` (the
    extreme seeds). Returns the scaled interval."""
    scaled = interval.scaled(scale)
    values = {
        "": scaled.mean,
        "_low": scaled.low,
        "_high": scaled.high,
        "_std": scaled.std,
        "_n": scaled.n,
        "_min": min(scaled.values),
        "_max": max(scaled.values),
    }
    for suffix, value in values.items():
        _glue(name + suffix, value)
    return scaled


def glue_values(values: Mapping[str, object], prefix: str = "") -> None:
    """Glue every value of ``values`` under ``prefix + key``: the settings a page quotes."""
    for key, value in values.items():
        _glue(prefix + key, value)
