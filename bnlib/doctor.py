"""A doctor for batch norm: ``diagnose(model, loader)`` returns the batch-norm mistakes it finds.

Each ``Finding`` names the problem, the layer, what was seen and what to do, in the page's
language (``lang="en"`` or ``"fr"``). Without data, ``diagnose`` reads the model: its modes, its
frozen layers, its layers without running statistics, and, through ``torch.fx``, which layer
feeds which (a bias or a dropout right before a batch norm, a batch norm called twice). Given a
loader, it also passes a few batches through a copy of the model in evaluation mode (the model
itself is left as it was) and compares each batch norm's running statistics with those of the
data, and counts the examples per batch. It prints nothing: printing is the caller's choice.

The problems are those users of batch norm meet most often; the chapter "In practice" shows
each of them on the book's networks, and ends with ``diagnose`` run on one.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

import torch
from torch import Tensor, nn

from bnlib.labels import Number
from bnlib.modules import is_batch_norm

__all__ = ["Finding", "PROBLEMS", "diagnose"]

_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)

# Each problem: what was seen (evidence) and what to do (fix), in each language. The {fields}
# are filled with what diagnose measured.
PROBLEMS = {
    "en": {
        "train_mode": (
            "the model is in training mode: batch norm normalises each batch with its own "
            "statistics, so a prediction depends on the other examples of its batch, and every "
            "batch updates the running averages",
            "call model.eval() before evaluating, and model.train() before training again",
        ),
        "frozen_but_updating": (
            "its weight and bias are frozen (requires_grad=False) but the layer is in training "
            "mode: it still normalises with batch statistics and updates its running averages",
            "put the layer in evaluation mode after model.train() (layer.eval()), or replace it "
            "with torchvision.ops.FrozenBatchNorm2d",
        ),
        "no_running_stats": (
            "track_running_stats=False: the layer keeps no running averages and normalises with "
            "the batch's statistics in evaluation mode too, so a prediction depends on its batch "
            "(and on (N, C) inputs a batch of one example fails)",
            "keep track_running_stats=True unless every batch at inference is large and drawn "
            "like the training ones",
        ),
        "bias_before_bn": (
            "{producer} adds a bias that this batch norm subtracts again with the batch mean: "
            "the bias gets a zero gradient and learns nothing",
            "create {producer} with bias=False: the batch norm's beta plays its part",
        ),
        "dropout_before_bn": (
            "{producer} feeds this batch norm directly: its statistics are those of dropped-out "
            "values in training, not those of the full values it gets at inference",
            "move the dropout after the last batch norm (Li et al., 2019)",
        ),
        "called_twice": (
            "the layer is called {calls} times in one forward pass: in training its running "
            "averages are updated {calls} times per step, from different inputs, and describe "
            "none of them",
            "give each place its own batch norm layer",
        ),
        "few_examples": (
            "batches of {batch} examples: each channel's statistics are estimated from few "
            "examples, noisily, and differ from the running averages used at inference "
            "(Wu and He, 2018: the error of batch norm grows quickly below 16 per batch)",
            "use larger batches, SyncBatchNorm across processes, or group norm",
        ),
        "stale_statistics": (
            "on the {examples} examples given, its input's per-channel means are {shift:.2f} "
            "running standard deviations from the running means and its variances "
            "{ratio:.2f} times the running variances (medians over the channels): the running "
            "averages do not describe this data",
            "re-estimate them on this data with the weights fixed, e.g. "
            "bnlib.training.recalibrate(model, batches, n) or, after weight averaging, "
            "torch.optim.swa_utils.update_bn(loader, model)",
        ),
        "structure_unknown": (
            "torch.fx could not trace the model ({error}) and no loader was given, so which "
            "layer feeds which was not checked",
            "pass a loader: diagnose then follows one forward pass",
        ),
    },
    "fr": {
        "train_mode": (
            "le modèle est en mode entraînement : la normalisation par lots normalise chaque lot "
            "avec ses propres statistiques, si bien qu'une prédiction dépend des autres exemples "
            "de son lot, et chaque lot met à jour les moyennes glissantes",
            "appeler model.eval() avant d'évaluer, puis model.train() avant de reprendre "
            "l'entraînement",
        ),
        "frozen_but_updating": (
            "son poids et son biais sont gelés (requires_grad=False), mais la couche est en mode "
            "entraînement : elle normalise toujours avec les statistiques du lot et met à jour "
            "ses moyennes glissantes",
            "passer la couche en mode évaluation après model.train() (layer.eval()), ou la "
            "remplacer par torchvision.ops.FrozenBatchNorm2d",
        ),
        "no_running_stats": (
            "track_running_stats=False : la couche ne tient pas de moyennes glissantes et "
            "normalise aussi en mode évaluation avec les statistiques du lot ; une prédiction "
            "dépend donc de son lot (et, sur des entrées (N, C), un lot d'un seul exemple échoue)",
            "garder track_running_stats=True, sauf si tous les lots d'inférence sont grands et "
            "tirés comme ceux de l'entraînement",
        ),
        "bias_before_bn": (
            "{producer} ajoute un biais que cette normalisation retranche aussitôt avec la "
            "moyenne du lot : son gradient est nul, il n'apprend rien",
            "créer {producer} avec bias=False : le bêta de la normalisation tient ce rôle",
        ),
        "dropout_before_bn": (
            "{producer} alimente directement cette normalisation : ses statistiques sont, à "
            "l'entraînement, celles de valeurs éteintes par le dropout, et non celles des "
            "valeurs entières qu'elle reçoit à l'inférence",
            "placer le dropout après la dernière normalisation par lots (Li et al., 2019)",
        ),
        "called_twice": (
            "la couche est appelée {calls} fois dans une même passe avant : à l'entraînement, "
            "ses moyennes glissantes sont mises à jour {calls} fois par pas, à partir d'entrées "
            "différentes, et n'en décrivent aucune",
            "donner à chaque emplacement sa propre couche de normalisation",
        ),
        "few_examples": (
            "des lots de {batch} exemples : les statistiques de chaque canal sont estimées sur "
            "peu d'exemples, avec bruit, et s'écartent des moyennes glissantes de l'inférence (Wu "
            "et He, 2018 : l'erreur de la normalisation par lots croît vite sous 16 par lot)",
            "prendre des lots plus grands, SyncBatchNorm entre processus, ou la normalisation "
            "par groupes",
        ),
        "stale_statistics": (
            "sur les {examples} exemples fournis, les moyennes par canal de son entrée sont à "
            "{shift:.2f} écarts-types glissants des moyennes glissantes, et ses variances valent "
            "{ratio:.2f} fois les variances glissantes (médianes sur les canaux) : les moyennes "
            "glissantes ne décrivent pas ces données",
            "les réestimer sur ces données, poids fixés, par exemple avec "
            "bnlib.training.recalibrate(model, batches, n) ou, après une moyenne de poids, "
            "torch.optim.swa_utils.update_bn(loader, model)",
        ),
        "structure_unknown": (
            "torch.fx n'a pas pu tracer le modèle ({error}) et aucun chargeur n'a été fourni : "
            "on n'a pas vérifié quelle couche alimente quelle autre",
            "fournir un chargeur : diagnose suit alors une passe avant",
        ),
    },
}


@dataclass(frozen=True)
class Finding:
    """One problem found: its name (a key of ``PROBLEMS``), the qualified name of the layer
    concerned (``""``: the whole model), what was seen and what to do."""

    problem: str
    module: str
    evidence: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.module}: " if self.module else ""  # "": the whole model
        return f"{where}{self.evidence}. → {self.fix}."


def _finding(lang: str, problem: str, module: str = "", **fields) -> Finding:
    evidence, fix = PROBLEMS[lang][problem]
    fields = {k: Number(v, lang) if isinstance(v, float) else v for k, v in fields.items()}
    return Finding(problem, module, evidence.format(**fields), fix.format(**fields))


class _Tracer(torch.fx.Tracer):
    """Keeps every batch norm as one node, bnlib's included (its Python checks are not traced)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return is_batch_norm(module) or super().is_leaf_module(module, qualified_name)


def _traced_graph(model: nn.Module):
    """``(edges, calls)`` read from ``torch.fx``: (producer, consumer) names of every module whose
    output is another's first input, and how many times each module is called."""
    graph = _Tracer().trace(model)
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    edges = [
        (node.args[0].target, node.target)
        for node in graph.nodes
        if node.op == "call_module"
        and node.args
        and isinstance(node.args[0], torch.fx.Node)
        and node.args[0].op == "call_module"
    ]
    return edges, calls


def _batch_input(batch) -> Tensor:
    return batch[0] if isinstance(batch, tuple | list) else batch


@torch.no_grad()
def _followed(model: nn.Module, batches: list) -> tuple[list, Counter, dict]:
    """One pass of a copy of ``model`` in evaluation mode over ``batches``, watched by hooks:
    ``(edges, calls, inputs)``, the edges and calls of the first batch's forward (as
    ``_traced_graph``), and every batch norm's inputs, by name."""
    net = copy.deepcopy(model).eval()
    names = {module: name for name, module in net.named_modules()}
    produced, edges, calls, inputs = {}, [], Counter(), {}
    first = True  # the structure is read from the first batch's forward pass

    def hook(module, args, output):
        name = names[module]
        if first:
            calls[name] += 1
            if args and isinstance(args[0], Tensor) and id(args[0]) in produced:
                edges.append((produced[id(args[0])][0], name))
            if isinstance(output, Tensor):
                produced[id(output)] = (name, output)  # the tensor kept alive: ids stay unique
        if is_batch_norm(module):
            inputs.setdefault(name, []).append(args[0])

    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        for batch in batches:
            net(_batch_input(batch))
            first = False
    finally:
        for handle in handles:
            handle.remove()
    return edges, calls, inputs


def _stale(norm: nn.Module, xs: list[Tensor]) -> tuple[float, float]:
    """``(shift, ratio)``: medians over the channels of |data mean - running mean| in running
    standard deviations, and of data variance / running variance, over the inputs ``xs``."""
    x = torch.cat([x.transpose(0, 1).flatten(1) for x in xs], dim=1).double()  # (C, values)
    var, mean = torch.var_mean(x, dim=1, correction=0)
    running_var = norm.running_var.double() + norm.eps
    shift = ((mean - norm.running_mean.double()).abs() / running_var.sqrt()).median().item()
    return shift, (var / running_var).median().item()


def diagnose(
    model: nn.Module,
    loader: Iterable | None = None,
    lang: str = "en",
    batches: int = 4,
    min_batch: int = 16,
    max_shift: float = 0.5,
    max_ratio: float = 2.0,
) -> list[Finding]:
    """The batch-norm problems of ``model`` (and of ``loader``'s data for it), each a ``Finding``.

    Args:
        model: any network; it is not changed (the data passes through a copy).
        loader: batches of inputs, or of ``(inputs, targets)``, as the model would get them;
            the first ``batches`` are taken from it. None: the model alone is read.
        lang: ``"en"`` or ``"fr"``, the language of the evidence and the fixes.
        min_batch: fewer examples per batch than this is a problem (``few_examples``).
        max_shift, max_ratio: running statistics are stale when the data's per-channel means are
            more than ``max_shift`` running standard deviations away, or its variances more than
            ``max_ratio`` times larger or smaller (medians over the channels).

    Returns:
        The findings, those about the whole model first, then those about a layer, problem by
        problem; an empty list: nothing found.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        >>> [f.problem for f in diagnose(net)]
        ['train_mode', 'bias_before_bn']
    """
    if lang not in PROBLEMS:
        raise ValueError(f"lang must be one of {sorted(PROBLEMS)}, got {lang!r}")
    modules = dict(model.named_modules())
    norms = {name: m for name, m in modules.items() if is_batch_norm(m)}
    findings = [_finding(lang, "train_mode")] if model.training and norms else []
    for name, norm in norms.items():
        frozen = [p for p in (norm.weight, norm.bias) if p is not None]
        if norm.training and frozen and not any(p.requires_grad for p in frozen):
            findings.append(_finding(lang, "frozen_but_updating", name))
        if not norm.track_running_stats:
            findings.append(_finding(lang, "no_running_stats", name))
    if not norms:
        return findings

    seen = list(islice(loader, batches)) if loader is not None else []
    try:
        edges, calls = _traced_graph(model)
    except Exception as error:  # torch.fx cannot trace data-dependent Python
        if not seen:
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            return [*findings, _finding(lang, "structure_unknown", error=first_line)]
        edges, calls = None, None
    inputs = {}
    if seen:
        followed_edges, followed_calls, inputs = _followed(model, seen)
        edges, calls = edges or followed_edges, calls or followed_calls

    for producer, consumer in edges:
        before, norm = modules[producer], modules[consumer]
        if not is_batch_norm(norm):
            continue
        if isinstance(before, _LINEAR) and before.bias is not None:
            findings.append(_finding(lang, "bias_before_bn", consumer, producer=producer))
        if isinstance(before, _DROPOUT) and before.p > 0:
            findings.append(_finding(lang, "dropout_before_bn", consumer, producer=producer))
    for name in norms:
        if calls.get(name, 0) > 1:
            findings.append(_finding(lang, "called_twice", name, calls=calls[name]))
    if seen:
        batch = min(len(_batch_input(b)) for b in seen)
        if batch < min_batch:
            findings.insert(int(model.training), _finding(lang, "few_examples", batch=batch))
        examples = sum(len(_batch_input(b)) for b in seen)
        for name, xs in inputs.items():
            norm = norms[name]
            if not norm.track_running_stats or norm.running_mean is None:
                continue
            shift, ratio = _stale(norm, xs)
            if shift > max_shift or not 1 / max_ratio <= ratio <= max_ratio:
                findings.append(
                    _finding(
                        lang, "stale_statistics", name, examples=examples, shift=shift, ratio=ratio
                    )
                )
    return findings
