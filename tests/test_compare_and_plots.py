"""bnlib.compare finds real differences; bnlib.plots labels figures in the page's language."""

import re

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import bnlib
from bnlib import plots
from bnlib.compare import compare_layers
from bnlib.labels import Number, formatted, message
from bnlib.plots import draw_batch_norm_diagram, plot_activation_drift

BATCHES = [torch.randn(8, 3, 4, 4) * 2 + 1 for _ in range(3)]


def test_compare_layers_twins_agree():
    diffs = compare_layers(
        bnlib.BatchNorm2d(3), nn.BatchNorm2d(3), BATCHES, torch.randn(5, 3, 4, 4)
    )
    assert set(diffs) == {
        "output",
        "grad_input",
        "grad_weight",
        "grad_bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    }
    assert max(diffs.values()) < 1e-5


def test_compare_layers_sees_a_different_layer():
    diffs = compare_layers(
        bnlib.BatchNorm2d(3, momentum=0.5), nn.BatchNorm2d(3), BATCHES, torch.randn(5, 3, 4, 4)
    )
    assert diffs["running_mean"] > 1e-2 and diffs["output"] > 1e-2  # eval output differs
    assert diffs["num_batches_tracked"] == 0  # both counted the same batches


def fake_history(shift):
    return {
        "step": [0, 10, 20],
        "percentiles": [[-1 + shift, 0 + shift, 1 + shift]] * 3,
        "test_accuracy": [0.1, 0.5, 0.8],
    }


@pytest.mark.parametrize(
    ("lang", "xlabel"), [("fr", "pas d'entraînement"), ("en", "training step")]
)
def test_drift_plot_is_labelled_in_the_page_language(lang, xlabel):
    fig = plot_activation_drift(fake_history(0), fake_history(2), lang=lang)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert all(ax.get_xlabel() == xlabel for ax in fig.axes)
    low, high = fig.axes[0].get_ylim()
    assert fig.axes[1].get_ylim() == (low, high) and low < -1 and high > 3  # one shared scale


def test_diagram_text_follows_the_language():
    texts = {t.get_text() for t in draw_batch_norm_diagram("fr").axes[0].texts}
    assert "normalisation par lots" in texts
    with pytest.raises(ValueError, match="lang must be one of"):
        draw_batch_norm_diagram("de")


def fake_run(accuracy, diverged=False):
    return {
        "step": [0, 10, 20],
        "train_loss": [None, 1.0, 0.5],
        "test_accuracy": [0.1, 0.5, accuracy],
        "train_accuracy": [0.1, 0.6, accuracy + 0.1],
        "diverged": diverged,
    }


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_benefit_plots_are_labelled_in_the_page_language(lang):
    t = plots.LABELS[lang]
    runs = {"without_bn": fake_run(0.1, diverged=True), "with_bn": fake_run(0.8)}
    fig = plots.plot_training_curves(runs, lang)
    assert [line.get_label() for line in fig.axes[1].get_legend().get_lines()] == [
        t["without_bn"],
        t["with_bn"],
    ]
    sweep = plots.plot_sweep(
        [0.1, 1.0], {"with_bn": [fake_run(0.8), fake_run(0.1, True)]}, "lr", lang
    )
    assert sweep.axes[0].get_xlabel() == t["lr"] and sweep.axes[0].get_xscale() == "log"
    ticks = [tick.get_text() for tick in sweep.axes[0].get_xticklabels()]
    assert ticks == (["0,1", "1"] if lang == "fr" else ["0.1", "1"])
    bars = plots.plot_generalisation(runs, lang)
    assert [tick.get_text() for tick in bars.axes[0].get_xticklabels()] == [
        t["without_bn"],
        t["with_bn"],
    ]
    noise = plots.plot_batch_noise({"batch_size": [2, 8], "noise_std": [0.5, 0.25]}, lang)
    assert noise.axes[0].get_ylabel() == t["noise_std"]


def test_confusion_matrix_and_misclassified_use_the_page_language():
    counts = torch.eye(10, dtype=torch.long) * 5
    counts[6, 0] = 3
    fig = plots.plot_confusion_matrix(counts, "fashion-mnist", "fr")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "classe réelle"
    assert [t.get_text() for t in ax.get_xticklabels()][6] == "chemise"
    X = torch.zeros(4, 1, 28, 28)
    y, predicted = torch.tensor([0, 6, 2, 3]), torch.tensor([0, 0, 2, 1])
    images = plots.plot_misclassified(X, y, predicted, "fashion-mnist", "en", count=3)
    titles = [a.get_title() for a in images.axes if a.get_title()]
    assert titles == ["true: shirt\npredicted: T-shirt/top", "true: dress\npredicted: trouser"]


def test_every_figure_word_exists_in_both_languages():
    from bnlib.labels import CLASS_NAMES, LABELS

    assert set(LABELS["fr"]) == set(LABELS["en"])
    assert all(len(names["fr"]) == len(names["en"]) == 10 for names in CLASS_NAMES.values())


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_benchmark_plot_is_labelled_in_the_page_language(lang):
    t = plots.LABELS[lang]
    rows = [
        {"shape": (2, 3), "implementation": name, "ms": ms, "floor_ms": 0.5}
        for name, ms in (("fast", 2.0), ("native", 1.0))
    ]
    ax = plots.plot_benchmark(rows, lang).axes[0]
    assert [tick.get_text() for tick in ax.get_yticklabels()] == [t["impl_native"], t["impl_fast"]]
    assert (
        ax.get_xlabel() == t["fwd_bwd_ms"]
        and ax.get_legend().get_texts()[0].get_text() == (t["memory_floor"])
    )


def test_training_curves_over_seeds_with_a_seed_that_diverged_at_once():
    import matplotlib.pyplot as plt

    from bnlib import plots

    kept = {"step": [0, 50], "train_loss": [None, 0.5], "test_accuracy": [0.1, 0.8]}
    lost = {"step": [0], "train_loss": [None], "test_accuracy": [0.1], "diverged": True}
    fig = plots.plot_training_curves({"with_bn": [kept | {"diverged": False}, lost]}, "en")
    assert len(fig.axes) == 2
    plt.close(fig)


def test_glue_values_pass_plain_numbers_to_glue(monkeypatch):
    import numpy as np

    from bnlib import report

    glued = {}
    monkeypatch.setattr(report, "_glue", lambda name, value: glued.__setitem__(name, value))
    report.glue_values({"a": 1})
    assert glued == {"a": 1}
    glued.clear()
    monkeypatch.undo()
    import myst_nb

    calls = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: calls.append(value))
    report.glue_values({"x": np.float64(0.25), "t": torch.tensor(3)})
    assert calls == [0.25, 3] and all(type(v) in (float, int) for v in calls)


def _tick_labels(fig) -> list[str]:
    fig.canvas.draw()
    return [
        t.get_text()
        for ax in fig.axes
        for t in ax.get_xticklabels() + ax.get_yticklabels() + [ax.yaxis.get_offset_text()]
    ]


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_default_tick_labels_follow_the_page_language(lang):
    history = {
        "step": [0, 50, 100],
        "train_loss": [2.3, 0.6, 0.45],
        "test_accuracy": [0.7, 0.72, 0.735],
    }
    ticks = _tick_labels(plots.plot_training_curves({"with_bn": [history]}, lang))
    decimals = [t for t in ticks if any(c.isdigit() for c in t) and ("." in t or "," in t)]
    assert decimals, "the accuracy axis has decimal ticks (69.5, 70.0, ...)"
    if lang == "fr":
        assert all("." not in t and "{,}" in t for t in decimals), decimals
    else:
        assert all("." in t and "," not in t for t in decimals), decimals


def test_french_offsets_are_powers_of_ten_with_a_decimal_comma():
    fig, ax = plt.subplots()
    ax.plot([1e-5, 3e-5], [1.5e-7, 2.5e-7])
    plots.in_language(fig, "fr")
    ticks = _tick_labels(fig)
    offset = ax.yaxis.get_offset_text().get_text()
    assert "10^{" in offset and not re.search(r"\de[-+\u2212]?\d", offset)
    assert not [t for t in ticks if "." in t]


def test_numbers_print_the_way_the_page_writes_them():
    """French: decimal comma, minus sign, a power of ten for the e-notation; English as Python."""
    assert formatted(0.25, ".2f", "fr") == "0,25" and formatted(0.25, ".2f", "en") == "0.25"
    assert formatted(-85.34, ".1f", "fr") == "\u221285,3"
    assert formatted(2.4e-07, ".1e", "fr") == "2,4 \u00d7 10\u207b\u2077"
    assert formatted(3e5, ".1e", "fr") == "3,0 \u00d7 10\u2075"
    assert formatted(2.4e-07, ".1e", "en") == "2.4e-07"
    assert f"{Number(1 / 3, 'fr'):.3f} %" == "0,333 %" and f"{Number(1 / 3, 'en'):.3f}" == "0.333"


def test_error_messages_the_chapters_show_are_in_the_pages_language():
    with pytest.raises(ValueError) as ours:
        bnlib.BatchNorm1d(3)(torch.randn(1, 3))
    with pytest.raises(ValueError) as theirs:
        nn.BatchNorm1d(3)(torch.randn(1, 3))
    for error in (ours.value, theirs.value):
        assert message(error, "en") == str(error)
        french = message(error, "fr")
        assert french.startswith("Il faut plus d'une valeur par canal en entraînement")
        assert "torch.Size([1, 3])" in french and "Expected" not in french
    assert "model.eval()" in message(ours.value, "fr")
    assert message(ValueError("something else"), "fr") == "something else"


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_rotation_and_layer_gradient_plots_draw_their_arms_in_the_page_language(lang):
    t = plots.LABELS[lang]
    watched = {
        "step": [0, 10, 20],
        "row_norm": [[1.0, 1.0], [1.1, 1.0], [1.2, 1.1]],
        "row_angle": [None, [0.02, 0.01], [0.03, 0.02]],
    }
    fig = plots.plot_rotation({"with_decay": [watched, watched]}, equilibrium=0.05, lang=lang)
    left, right = fig.axes
    assert left.get_ylabel() == t["row_norm"] and right.get_ylabel() == t["row_angle"]
    assert [line.get_ydata()[-1] for line in right.get_lines()[:2]] == [0.03, 0.02]
    assert right.get_lines()[-1].get_ydata()[0] == 0.05  # the equilibrium line
    assert right.get_legend().get_texts()[0].get_text() == t["equilibrium"]
    layer_two = left.get_legend().get_texts()[1].get_text()
    assert layer_two == f"{t['with_decay']}, {t['hidden_layer'].format(i=2)}"
    grads = plots.plot_layer_gradients(
        {"with_bn": [[4.0, 2.0, 1.0], [8.0, 2.0, 1.0]], "without_bn_he": [[1.0, 1.0, 1.0]] * 2},
        lang=lang,
    )
    ax = grads.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == t["layer_index"]
    assert list(ax.get_lines()[0].get_ydata()) == [6.0, 2.0, 1.0]  # the mean over the seeds
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [
        t["with_bn"],
        t["without_bn_he"],
    ]


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_plot_residual_arms_marks_diverged_runs(lang):
    t = bnlib.labels.labels(lang)
    final = {
        ("bn", "low"): [0.8, 0.82],
        ("bn", "high"): [0.7, 0.74],
        ("none", "low"): [0.78, 0.8],
        ("none", "high"): [None, 0.2],
    }
    fig = plots.plot_residual_arms(final, {"low": 0.1, "high": 1.0}, lang=lang)
    low, high = fig.axes
    assert [x.get_text() for x in high.get_xticklabels()] == [t["res_bn"], t["res_none"]]
    assert high.get_title() == t["learning_rate_value"].format(lr="1")
    crosses = [line for line in high.get_lines() if line.get_marker() == "x"]
    # bn's crosses (none), the network without normalisation's (one), the legend's key (empty)
    assert [list(line.get_ydata()) for line in crosses] == [[], [0], []]
    assert [text.get_text() for text in high.get_legend().get_texts()] == [t["diverged"]]
    means = [list(line.get_ydata()) for line in low.get_lines() if line.get_marker() == "None"]
    assert means[0] == pytest.approx([81.0, 81.0]) and low.get_ylabel() == t["final_accuracy"]
