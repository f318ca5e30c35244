"""Figures, labelled in the page's language. They draw histories; they compute nothing."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

__all__ = ["LABELS", "plot_activation_drift", "draw_batch_norm_diagram"]

LABELS = {
    "en": {
        "step": "training step",
        "sigmoid_input": "input of one sigmoid (15th, 50th, 85th percentiles)",
        "test_accuracy": "test accuracy (%)",
        "without_bn": "without batch norm",
        "with_bn": "with batch norm",
        "mini_batch": "mini-batch\n$x$: (N, C, H, W)",
        "layer": "convolution\nor linear layer",
        "batch_norm": "batch norm",
        "stats": "per channel, over N, H, W:\n$\\mu_B$, $\\sigma_B^2$",
        "normalise": "$\\hat{x} = (x - \\mu_B)\\,/\\sqrt{\\sigma_B^2 + \\varepsilon}$",
        "affine": "$y = \\gamma\\,\\hat{x} + \\beta$  ($\\gamma$, $\\beta$ learned)",
        "activation": "nonlinearity\n(ReLU, sigmoid)",
        "next": "next\nlayer",
        "running": "running averages of $\\mu_B$ and $\\sigma_B^2$\n(used instead in eval mode)",
    },
    "fr": {
        "step": "pas d'entraînement",
        "sigmoid_input": "entrée d'une sigmoïde (15e, 50e, 85e centiles)",
        "test_accuracy": "exactitude sur le jeu de test (%)",
        "without_bn": "sans normalisation par lots",
        "with_bn": "avec normalisation par lots",
        "mini_batch": "mini-lot\n$x$ : (N, C, H, W)",
        "layer": "convolution\nou couche linéaire",
        "batch_norm": "normalisation par lots",
        "stats": "par canal, sur N, H, W :\n$\\mu_B$, $\\sigma_B^2$",
        "normalise": "$\\hat{x} = (x - \\mu_B)\\,/\\sqrt{\\sigma_B^2 + \\varepsilon}$",
        "affine": "$y = \\gamma\\,\\hat{x} + \\beta$  ($\\gamma$, $\\beta$ appris)",
        "activation": "non-linéarité\n(ReLU, sigmoïde)",
        "next": "couche\nsuivante",
        "running": (
            "moyennes glissantes de $\\mu_B$ et $\\sigma_B^2$\n"
            "(utilisées à leur place en évaluation)"
        ),
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


def _box(ax, x, y, w, h, text, colour, size="medium"):
    """A rounded box centred on (x, y) with centred text."""
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.02",
            facecolor=colour,
            edgecolor="#333333",
            linewidth=1.2,
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=size)


def _arrow(ax, start, end, style="-|>", linestyle="-"):
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        arrowprops={"arrowstyle": style, "color": "#333333", "lw": 1.4, "linestyle": linestyle},
    )


def draw_batch_norm_diagram(lang: str = "en") -> Figure:
    """Where batch norm sits in a network, and the three steps it computes (training mode)."""
    t = _labels(lang)
    fig, ax = plt.subplots(figsize=(12, 4.2), layout="constrained")
    ax.set(xlim=(0, 12), ylim=(0, 4.2))
    ax.axis("off")
    # the batch norm layer: a frame holding its three steps
    ax.add_patch(
        FancyBboxPatch(
            (4.2, 0.9),
            4.3,
            3.0,
            boxstyle="round,pad=0.05",
            facecolor="#e6f5ef",
            edgecolor="#1b9e77",
            linewidth=2,
        )
    )
    ax.text(6.35, 3.65, t["batch_norm"], ha="center", va="center", weight="bold")
    _box(ax, 6.5, 3.0, 3.5, 0.7, t["stats"], "#ffffff", "small")
    _box(ax, 6.5, 2.05, 3.5, 0.6, t["normalise"], "#ffffff", "small")
    _box(ax, 6.5, 1.25, 3.5, 0.5, t["affine"], "#ffffff", "small")
    _arrow(ax, (6.5, 2.65), (6.5, 2.35))
    _arrow(ax, (6.5, 1.75), (6.5, 1.5))
    # the network around it
    _box(ax, 0.9, 2.0, 1.5, 1.0, t["mini_batch"], "#f2f2f2", "small")
    _box(ax, 3.0, 2.0, 1.7, 1.0, t["layer"], "#fde0c5", "small")
    _box(ax, 9.9, 2.0, 1.7, 1.0, t["activation"], "#fde0c5", "small")
    _box(ax, 11.45, 2.0, 0.9, 1.0, t["next"], "#f2f2f2", "small")
    _arrow(ax, (1.65, 2.0), (2.15, 2.0))
    _arrow(ax, (3.85, 2.0), (4.15, 2.0))
    _arrow(ax, (8.55, 2.0), (9.05, 2.0))
    _arrow(ax, (10.75, 2.0), (11.0, 2.0))
    # running statistics, updated in training, used in evaluation
    _box(ax, 6.35, 0.3, 5.2, 0.5, t["running"], "#fff8d6", "small")
    _arrow(ax, (4.72, 3.0), (4.45, 3.0), style="-")
    _arrow(ax, (4.45, 3.0), (4.45, 0.55), style="<|-|>", linestyle="--")
    return fig
