"""Figures, labelled in the page's language. They draw histories; they compute nothing."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import ScalarFormatter
from torch import Tensor

from bnlib.labels import CLASS_NAMES, LABELS, formatted, labels
from bnlib.stats import Interval

__all__ = [
    "LABELS",
    "plot_activation_drift",
    "draw_batch_norm_diagram",
    "plot_training_curves",
    "plot_sweep",
    "plot_generalisation",
    "plot_batch_noise",
    "plot_landscape",
    "plot_benchmark",
    "plot_confusion_matrix",
    "plot_misclassified",
    "plot_seed_spread",
    "plot_rotation",
    "plot_layer_gradients",
]

# Colours that stay distinct on light and dark backgrounds (the figure keeps a white face).
COLOURS = {
    "without_bn": "#d95f02",
    "with_bn": "#1b9e77",
    "with_noisy_bn": "#7570b3",
    "with_strong_noise": "#e7298a",
    "with_shared_noise": "#a6761d",
    "with_strong_shared_noise": "#666666",
    "with_dropout": "#66a61e",
    "with_bn_dropout": "#a6761d",
    "per_process_bn": "#d95f02",
    "sync_bn": "#1b9e77",
    "layer_norm": "#7570b3",
    "group_norm": "#e7298a",
    "bn_before_activation": "#1b9e77",
    "bn_after_activation": "#66a61e",
    "without_decay": "#d95f02",
    "with_decay": "#1b9e77",
    "without_bn_he": "#7570b3",
}


def number(value: float, lang: str = "en") -> str:
    """``value`` in its shortest form, with a decimal comma in French (0.3 -> "0,3")."""
    return formatted(value, "g", lang)


class FrenchFormatter(ScalarFormatter):
    """Matplotlib's default tick labels, written the French way: a decimal comma (0,5), and the
    offset or scale of an axis as a power of ten (×10⁻³), never in e-notation."""

    def __init__(self):
        super().__init__(useMathText=True)

    def __call__(self, x, pos=None):
        return _decimal_comma(super().__call__(x, pos))

    def get_offset(self):
        return _decimal_comma(super().get_offset())


def _decimal_comma(text: str) -> str:
    """0.5 -> 0,5; in mathtext ($...$) {,}, a comma that adds no space after it."""
    return text.replace(".", "{,}" if text.startswith("$") else ",")


def in_language(fig: Figure, lang: str) -> Figure:
    """The figure with the page's number format on every axis that uses matplotlib's default
    tick labels (ticks set by hand go through ``number``)."""
    if lang == "fr":
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                if type(axis.get_major_formatter()) is ScalarFormatter:
                    axis.set_major_formatter(FrenchFormatter())
    return fig


def _figure_in_language(plot):
    """``plot(..., lang)`` returning its figure with ``in_language(fig, lang)`` applied."""
    signature = inspect.signature(plot)

    @functools.wraps(plot)
    def wrapped(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return in_language(plot(*args, **kwargs), bound.arguments["lang"])

    return wrapped


def _seeds(runs: dict | list) -> list[dict]:
    """One history, or the histories of several seeds, as a list."""
    return runs if isinstance(runs, list) else [runs]


def _mean_and_range(histories: list[dict], key: str, scale: float = 1.0):
    """Steps, and at each step the mean, min and max of ``key`` over the seeds that reached it
    (a diverged seed stops early)."""
    longest = max(histories, key=lambda h: len(h["step"]))
    steps, mean, low, high = [], [], [], []
    for i, step in enumerate(longest["step"]):
        values = [scale * h[key][i] for h in histories if len(h[key]) > i and h[key][i] is not None]
        if values:
            steps.append(step)
            mean.append(sum(values) / len(values))
            low.append(min(values))
            high.append(max(values))
    return steps, mean, low, high


def _plot_seeds(ax, histories: list[dict], key: str, colour, label: str, scale: float = 1.0):
    """The mean over seeds as a line, the range of the seeds as a band, each seed faint."""
    steps, mean, low, high = _mean_and_range(histories, key, scale)
    if len(histories) > 1:
        ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
        for h in histories:
            pairs = [
                (s, scale * v) for s, v in zip(h["step"], h[key], strict=True) if v is not None
            ]
            if pairs:  # a seed that diverged before its first window has no training loss
                ax.plot(*zip(*pairs, strict=True), color=colour, alpha=0.25, linewidth=0.6)
    ax.plot(steps, mean, color=colour, label=label)
    for h in histories:
        if h.get("diverged") and h[key] and h[key][-1] is not None:
            ax.plot(h["step"][-1], scale * h[key][-1], "x", ms=8, color=colour)


@_figure_in_language
def plot_activation_drift(
    without_bn: dict | list, with_bn: dict | list, lang: str = "en"
) -> Figure:
    """Three panels from ``activation_drift`` histories (one, or one per seed): the sigmoid
    input's percentiles without and with batch norm (same vertical scale; over seeds, the mean of
    each percentile), and test accuracy against steps (over seeds: the mean, the seeds' range as
    a band)."""
    t = labels(lang)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), layout="constrained")
    runs = {"without_bn": _seeds(without_bn), "with_bn": _seeds(with_bn)}
    bounds = []
    for ax, (key, histories) in zip(axes[:2], runs.items(), strict=True):
        steps = histories[0]["step"]
        p15, p50, p85 = (
            [
                sum(h["percentiles"][i][q] for h in histories) / len(histories)
                for i in range(len(steps))
            ]
            for q in range(3)
        )
        ax.fill_between(steps, p15, p85, color=COLOURS[key], alpha=0.3, linewidth=0)
        ax.plot(steps, p50, color=COLOURS[key])
        ax.set(title=t[key], xlabel=t["step"], ylabel=t["sigmoid_input"])
        bounds += [min(p15), max(p85)]
    for ax in axes[:2]:
        ax.set_ylim(min(bounds) - 0.2, max(bounds) + 0.2)
        ax.yaxis.label.set_size("small")
    for key, histories in runs.items():
        _plot_seeds(axes[2], histories, "test_accuracy", COLOURS[key], t[key], scale=100)
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


@_figure_in_language
def draw_batch_norm_diagram(lang: str = "en") -> Figure:
    """Where batch norm sits in a network, and the three steps it computes (training mode)."""
    t = labels(lang)
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


@_figure_in_language
def plot_training_curves(runs: dict[str, dict | list[dict]], lang: str = "en") -> Figure:
    """Training loss and test accuracy against steps, one line per family of runs.

    ``runs`` maps a label key of ``LABELS`` (``"without_bn"``, ``"with_bn"``, ...) to a
    ``train_run`` history, or to the histories of several seeds: then the line is their mean, the
    band their range, each seed a faint line. A diverged run ends where it diverged, marked with
    a cross.
    """
    t = labels(lang)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for key, family in runs.items():
        histories = _seeds(family)
        _plot_seeds(ax_loss, histories, "train_loss", COLOURS.get(key), t[key])
        _plot_seeds(ax_acc, histories, "test_accuracy", COLOURS.get(key), t[key], scale=100)
    ax_loss.set(xlabel=t["step"], ylabel=t["train_loss"], yscale="log")
    ax_acc.set(xlabel=t["step"], ylabel=t["accuracy"] + " — " + t["test"])
    ax_acc.legend(loc="lower right")
    return fig


@_figure_in_language
def plot_sweep(
    values: Sequence[float], runs: dict[str, list[dict]], xlabel: str, lang: str = "en"
) -> Figure:
    """Final test accuracy against a swept setting (log scale), one line per family of runs.

    ``runs`` maps a label key to the histories of the sweep, in the order of ``values``: one
    history per value, or a list of seeds' histories per value. Over seeds, the line joins the
    means of the seeds that did not diverge, each seed is a faint dot, and a value at which any
    seed diverged gets a cross (at the mean of the diverged seeds' last accuracy).
    """
    t = labels(lang)
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    for key, per_value in runs.items():
        colour = COLOURS.get(key)
        line, crosses = [], []
        for v, family in zip(values, per_value, strict=True):
            histories = _seeds(family)
            kept = [100 * h["test_accuracy"][-1] for h in histories if not h["diverged"]]
            lost = [100 * h["test_accuracy"][-1] for h in histories if h["diverged"]]
            if kept:
                line.append((v, sum(kept) / len(kept)))
                if len(histories) > 1:
                    ax.plot([v] * len(kept), kept, ".", color=colour, alpha=0.35)
            if lost:
                crosses.append((v, sum(lost) / len(lost)))
        if line:
            ax.plot(*zip(*line, strict=True), "o-", color=colour, label=t[key])
        else:  # every run diverged: the legend still names the family
            ax.plot([], [], "o-", color=colour, label=t[key])
        if crosses:
            ax.plot(*zip(*crosses, strict=True), "x", ms=12, mew=2, color=colour)
    ax.set(xscale="log", xlabel=t[xlabel], ylabel=t["final_test_accuracy"], ylim=(0, 100))
    ax.minorticks_off()  # one tick per swept value, written in the page's language
    ax.set_xticks(values, [number(v, lang) for v in values])
    any_diverged = any(
        h["diverged"] for per_value in runs.values() for f in per_value for h in _seeds(f)
    )
    # below the axes, so no point is hidden
    ax.legend(
        title=f"x: {t['diverged']}" if any_diverged else None,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        ncols=min(len(runs), 3),
        frameon=False,
    )
    return fig


@_figure_in_language
def plot_generalisation(runs: dict[str, dict | list[dict]], lang: str = "en") -> Figure:
    """Final training and test accuracy side by side for each run: the gap is overfitting.
    Over seeds, each bar is the mean, with the seeds' range as an error bar."""
    t = labels(lang)
    fig, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
    keys = list(runs)
    width = 0.38
    lows = []
    for offset, (split, colour) in zip(
        (-width / 2, width / 2), (("train", "#bbbbbb"), ("test", "#555555")), strict=True
    ):
        finals = [[100 * h[f"{split}_accuracy"][-1] for h in _seeds(runs[k])] for k in keys]
        means = [sum(f) / len(f) for f in finals]
        errors = [
            [m - min(f) for m, f in zip(means, finals, strict=True)],
            [max(f) - m for m, f in zip(means, finals, strict=True)],
        ]
        ax.bar(
            [i + offset for i in range(len(keys))],
            means,
            width,
            color=colour,
            label=t[split],
            yerr=errors if max(len(f) for f in finals) > 1 else None,
            capsize=3,
        )
        lows += [min(f) for f in finals]
    ax.set_xticks(range(len(keys)), [t[k] for k in keys], rotation=15)
    low = min(lows)
    ax.set(ylabel=t["accuracy"], ylim=(max(0, low - 10), 100.5))
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)
    return fig


@_figure_in_language
def plot_landscape(runs: dict[str, list[dict]], lang: str = "en") -> Figure:
    """Three panels from ``bnlib.landscape`` histories (a list of seeds per family): the loss
    variation, the gradient change and the effective beta-smoothness along the gradient,
    against the training step (line: mean over the seeds; band: their range; faint: each)."""
    t = labels(lang)
    keys = ("loss_range", "grad_change", "smoothness")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), layout="constrained")
    for key, histories in runs.items():
        for ax, measure in zip(axes, keys, strict=True):
            _plot_seeds(ax, _seeds(histories), measure, COLOURS.get(key), t[key])
    for ax, measure in zip(axes, keys, strict=True):
        ax.set(xlabel=t["step"], ylabel=t[measure], yscale="log")
        ax.yaxis.label.set_size("small")
    axes[0].legend(loc="best")
    return fig


@_figure_in_language
def plot_batch_noise(history: dict, lang: str = "en") -> Figure:
    """The noise batch norm adds to one image's features against the mini-batch size (log-log),
    with the 1/sqrt(B) line through the last point for comparison."""
    t = labels(lang)
    sizes, noise = history["batch_size"], history["noise_std"]
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    ax.plot(sizes, noise, "o-", color=COLOURS["with_bn"], label=t["measured"])
    reference = [noise[-1] * (sizes[-1] / b) ** 0.5 for b in sizes]
    ax.plot(sizes, reference, "--", color="#555555", label=t["inverse_sqrt"])
    ax.set(xscale="log", yscale="log", xlabel=t["batch_size"], ylabel=t["noise_std"])
    ax.legend()
    return fig


@_figure_in_language
def plot_benchmark(rows: Sequence[dict], lang: str = "en") -> Figure:
    """Forward + backward time of each implementation for one shape (rows of
    ``bnlib.benchmark.benchmark``), slowest at the top, with the memory floor as a dashed line."""
    t = labels(lang)
    rows = sorted(rows, key=lambda row: row["ms"])
    fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
    names = [t[f"impl_{row['implementation']}"] for row in rows]
    colours = ["#555555" if row["implementation"] == "native" else "#1b9e77" for row in rows]
    ax.barh(names, [row["ms"] for row in rows], color=colours)
    ax.axvline(rows[0]["floor_ms"], color="#d95f02", linestyle="--", label=t["memory_floor"])
    ax.set(xlabel=t["fwd_bwd_ms"], title=f"{tuple(rows[0]['shape'])}, float32")
    ax.legend(loc="lower right")
    return fig


@_figure_in_language
def plot_confusion_matrix(
    counts: Tensor, dataset: str = "fashion-mnist", lang: str = "en"
) -> Figure:
    """A confusion matrix (rows: true class, columns: predicted), counts written in each cell."""
    t, names = labels(lang), CLASS_NAMES[dataset][lang]
    fig, ax = plt.subplots(figsize=(7.5, 6.5), layout="constrained")
    image = ax.imshow(counts.numpy(), cmap="Greens")
    high = counts.max().item()
    for (i, j), count in zip(
        [(i, j) for i in range(len(names)) for j in range(len(names))],
        counts.flatten().tolist(),
        strict=True,
    ):
        colour = "white" if count > high / 2 else "black"
        ax.text(j, i, count, ha="center", va="center", fontsize="x-small", color=colour)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel=t["predicted_class"], ylabel=t["true_class"])
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


@_figure_in_language
def plot_misclassified(
    X: Tensor,
    y: Tensor,
    predicted: Tensor,
    dataset: str = "fashion-mnist",
    lang: str = "en",
    count: int = 8,
) -> Figure:
    """The first ``count`` misclassified images with their true and predicted classes."""
    t, names = labels(lang), CLASS_NAMES[dataset][lang]
    wrong = (predicted != y).nonzero().flatten()[:count].tolist()
    fig, axes = plt.subplots(1, count, figsize=(1.6 * count, 2.3), layout="constrained")
    for ax, i in zip(axes, wrong, strict=False):
        ax.imshow(X[i, 0].numpy(), cmap="gray_r")
        ax.set_title(
            f"{t['truth']}: {names[y[i]]}\n{t['predicted']}: {names[predicted[i]]}",
            fontsize="small",
        )
    for ax in axes:
        ax.axis("off")
    return fig


@_figure_in_language
def plot_seed_spread(arms: dict[str, Interval], difference: Interval, lang: str = "en") -> Figure:
    """Left: each seed's final accuracy in two arms that share their seeds (a thin line joins a
    seed's two runs), with each arm's mean and 95 % interval. Right: each seed's difference
    between the arms, with its mean and 95 % interval, and zero."""
    t = labels(lang)
    fig, (ax_arms, ax_diff) = plt.subplots(
        1, 2, figsize=(10, 3.8), layout="constrained", width_ratios=(2, 1)
    )
    keys = list(arms)
    for a, b in zip(*(arms[k].values for k in keys), strict=True):
        ax_arms.plot([0, 1], [a, b], color="#bbbbbb", linewidth=0.8, zorder=1)
    for x, key in enumerate(keys):
        interval = arms[key]
        ax_arms.plot([x] * interval.n, interval.values, "o", color=COLOURS.get(key), alpha=0.6)
        ax_arms.errorbar(
            x + 0.12,
            interval.mean,
            yerr=[[interval.mean - interval.low], [interval.high - interval.mean]],
            fmt="s",
            color="#333333",
            capsize=4,
        )
    ax_arms.set_xticks(range(len(keys)), [t[k] for k in keys])
    ax_arms.set(xlim=(-0.4, len(keys) - 0.6), ylabel=t["seed_final"])
    jitter = [0.04 * ((i % 5) - 2) for i in range(difference.n)]
    ax_diff.plot(jitter, difference.values, "o", color=COLOURS["with_bn"], alpha=0.6)
    ax_diff.errorbar(
        0.3,
        difference.mean,
        yerr=[[difference.mean - difference.low], [difference.high - difference.mean]],
        fmt="s",
        color="#333333",
        capsize=4,
        label=t["mean_interval"],
    )
    ax_diff.axhline(0, color="#555555", linestyle="--", linewidth=1)
    ax_diff.set(xlim=(-0.3, 0.6), xticks=[], ylabel=t["seed_difference"])
    ax_diff.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return fig


@_figure_in_language
def plot_rotation(
    runs: dict[str, list[dict]], equilibrium: float | None = None, lang: str = "en"
) -> Figure:
    """Along training, for each arm of ``runs`` (a key of ``COLOURS``: histories of
    ``RunConfig(watch_rows=True)``): the median norm of a weight row of each hidden layer (left)
    and the angle its rows turn by in one step (right), means over the seeds, one line style
    per layer; ``equilibrium``, if given, as a dashed line on the right."""
    t = labels(lang)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    styles = ("-", "--", ":")
    for arm, histories in runs.items():
        steps = histories[0]["step"]
        depth = len(histories[0]["row_norm"][0])
        for i in range(depth):
            norm = [
                sum(h["row_norm"][k][i] for h in histories) / len(histories)
                for k in range(len(steps))
            ]
            angle = [
                sum(h["row_angle"][k][i] for h in histories) / len(histories)
                for k in range(1, len(steps))
            ]
            label = f"{t[arm]}, {t['hidden_layer'].format(i=i + 1)}"
            left.plot(steps, norm, styles[i % 3], color=COLOURS[arm], label=label)
            right.plot(steps[1:], angle, styles[i % 3], color=COLOURS[arm])
    if equilibrium is not None:
        right.axhline(
            equilibrium, color="#555555", linestyle="--", linewidth=1, label=t["equilibrium"]
        )
        right.legend()
    left.set(xlabel=t["step"], ylabel=t["row_norm"])
    right.set(xlabel=t["step"], ylabel=t["row_angle"])
    left.legend(fontsize="small")
    return fig


@_figure_in_language
def plot_layer_gradients(norms: dict[str, list[list[float]]], lang: str = "en") -> Figure:
    """The gradient norm of each hidden layer's weights at initialisation, first layer on the
    left, for each arm of ``norms`` (a key of ``COLOURS``: one list of per-layer norms per
    seed): the mean over the seeds as a line, the range of the seeds as a band, log scale."""
    t = labels(lang)
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    for arm, seeds in norms.items():
        layers = range(1, len(seeds[0]) + 1)
        columns = list(zip(*seeds, strict=True))
        ax.fill_between(
            layers,
            [min(c) for c in columns],
            [max(c) for c in columns],
            color=COLOURS[arm],
            alpha=0.2,
            linewidth=0,
        )
        ax.plot(layers, [sum(c) / len(c) for c in columns], color=COLOURS[arm], label=t[arm])
    ax.set(yscale="log", xlabel=t["layer_index"], ylabel=t["grad_norm"])
    ax.legend()
    return fig


@_figure_in_language
def plot_residual_arms(
    final: dict[tuple[str, str], list[float | None]], lrs: dict[str, float], lang: str = "en"
) -> Figure:
    """Each seed's final test accuracy for each variant (``(variant, lr key)`` -> one accuracy
    per seed, None where the run diverged), one panel per learning rate of ``lrs``; a diverged
    run is a cross at the bottom of its panel, a black bar the mean of the seeds that did not
    diverge."""
    t = labels(lang)
    variants = list(dict.fromkeys(variant for variant, _ in final))
    fig, axes = plt.subplots(1, len(lrs), figsize=(10, 4), layout="constrained", sharey=True)
    for ax, (key, lr) in zip(axes, lrs.items(), strict=True):
        for x, variant in enumerate(variants):
            values = final[variant, key]
            done = [100 * v for v in values if v is not None]
            jitter = [x + 0.05 * (i - (len(values) - 1) / 2) for i in range(len(values))]
            ax.plot(
                [j for j, v in zip(jitter, values, strict=True) if v is not None], done, "o",
                color=f"C{x}", alpha=0.7,
            )  # fmt: skip
            failed = [j for j, v in zip(jitter, values, strict=True) if v is None]
            ax.plot(failed, [0] * len(failed), "x", color=f"C{x}", markersize=8)
            if done:
                ax.plot([x - 0.2, x + 0.2], [sum(done) / len(done)] * 2, color="#333333")
        ax.set_xticks(range(len(variants)), [t[f"res_{v}"] for v in variants], rotation=30)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
        ax.set(title=t["learning_rate_value"].format(lr=number(lr, lang)), ylim=(-5, 100))
        ax.plot([], [], "x", color="#333333", label=t["diverged"])  # the crosses' key
        ax.legend(loc="center right")
    axes[0].set_ylabel(t["final_accuracy"])
    return fig
