"""Figures, labelled in the page's language. They draw histories; they compute nothing."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["LABELS", "plot_activation_drift"]

LABELS = {
    "en": {
        "step": "training step",
        "sigmoid_input": "input of one sigmoid (15th, 50th, 85th percentiles)",
        "test_accuracy": "test accuracy (%)",
        "without_bn": "without batch norm",
        "with_bn": "with batch norm",
    },
    "fr": {
        "step": "pas d'entraînement",
        "sigmoid_input": "entrée d'une sigmoïde (15e, 50e, 85e centiles)",
        "test_accuracy": "exactitude sur le jeu de test (%)",
        "without_bn": "sans normalisation par lots",
        "with_bn": "avec normalisation par lots",
    },
}

# Colours that stay distinct on light and dark backgrounds (the figure keeps a white face).
COLOURS = {"without_bn": "#d95f02", "with_bn": "#1b9e77"}


def _labels(lang: str) -> dict[str, str]:
    if lang not in LABELS:
        raise ValueError(f"lang must be one of {sorted(LABELS)}, got {lang!r}")
    return LABELS[lang]


def plot_activation_drift(without_bn: dict, with_bn: dict, lang: str = "en") -> Figure:
    """Three panels from two ``activation_drift`` histories: the sigmoid input's percentiles
    without and with batch norm (same vertical scale), and test accuracy against steps."""
    t = _labels(lang)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), layout="constrained")
    runs = {"without_bn": without_bn, "with_bn": with_bn}
    for ax, (key, history) in zip(axes[:2], runs.items(), strict=True):
        p15, p50, p85 = zip(*history["percentiles"], strict=True)
        ax.fill_between(history["step"], p15, p85, color=COLOURS[key], alpha=0.3, linewidth=0)
        ax.plot(history["step"], p50, color=COLOURS[key])
        ax.set(title=t[key], xlabel=t["step"], ylabel=t["sigmoid_input"])
    low = min(p15 for h in runs.values() for p15, _, _ in h["percentiles"])
    high = max(p85 for h in runs.values() for _, _, p85 in h["percentiles"])
    for ax in axes[:2]:
        ax.set_ylim(low - 0.2, high + 0.2)
        ax.yaxis.label.set_size("small")
    for key, history in runs.items():
        accuracy = [100 * a for a in history["test_accuracy"]]
        axes[2].plot(history["step"], accuracy, color=COLOURS[key], label=t[key])
    axes[2].set(xlabel=t["step"], ylabel=t["test_accuracy"])
    axes[2].legend(loc="lower right")
    return fig
