"""The words on the book's figures, in each language of the book.

Figures are labelled in the language of the page that draws them: every plotting function takes
``lang`` and looks its words up here.
"""

import re

__all__ = ["LABELS", "CLASS_NAMES", "labels", "formatted", "Number", "message"]

LABELS = {
    "en": {
        "step": "training step",
        "sigmoid_input": "input of one sigmoid (15th, 50th, 85th percentiles)",
        "test_accuracy": "test accuracy (%)",
        "without_bn": "without batch norm",
        "with_bn": "with batch norm",
        "with_noisy_bn": "batch norm + shifting noise",
        "with_strong_noise": "batch norm + strong shifting noise",
        "with_shared_noise": "batch norm + shared shifting noise (variant)",
        "with_strong_shared_noise": "batch norm + strong shared shifting noise (variant)",
        "loss_range": "loss variation along the gradient\n(max - min, log scale)",
        "grad_change": "gradient change along the gradient\n(max l2 norm, log scale)",
        "smoothness": "effective $\\beta$-smoothness\n(log scale)",
        "with_dropout": "dropout",
        "with_bn_dropout": "batch norm + dropout",
        "train_loss": "training loss (NLL)",
        "test_loss": "test loss (NLL)",
        "accuracy": "accuracy (%)",
        "train_accuracy": "training accuracy (%)",
        "final_test_accuracy": "final test accuracy (%)",
        "lr": "learning rate (log scale)",
        "init_gain": "initial weight scale (gain, log scale)",
        "batch_size": "mini-batch size (log scale)",
        "noise_std": "std of one image's normalised features\nacross mini-batches (log scale)",
        "measured": "measured",
        "inverse_sqrt": "$\\propto 1/\\sqrt{N}$",
        "train": "training set",
        "test": "test set",
        "diverged": "diverged",
        "per_process_bn": "per-process batch norm",
        "sync_bn": "synchronised batch norm",
        "layer_norm": "layer norm",
        "group_norm": "group norm",
        "bn_before_activation": "batch norm before the activation",
        "bn_after_activation": "batch norm after the activation",
        "without_decay": "no weight decay",
        "with_decay": "weight decay",
        "row_norm": "median norm of a weight row $\\|w_i\\|$",
        "row_angle": "angle a row turns by in one step\n(radians, root mean square)",
        "equilibrium": "equilibrium $\\sqrt{2\\eta\\lambda}$",
        "hidden_layer": "layer {i}",
        "layer_index": "hidden layer (1: the first)",
        "grad_norm": "norm of the gradient of its weights\n(log scale)",
        "without_bn_he": "without batch norm, He initialisation",
        "res_bn": "batch norm",
        "res_bn_zero_gamma": "batch norm, $\\gamma = 0$",
        "res_none": "none",
        "res_skipinit": "SkipInit",
        "res_fixup": "Fixup",
        "res_nf": "normalizer-free",
        "final_accuracy": "final test accuracy (%)",
        "learning_rate_value": "learning rate {lr}",
        "impl_naive": "textbook formula, autograd",
        "impl_reference": "bnlib, readable Function",
        "impl_fast": "bnlib, fast Function",
        "impl_compiled": "textbook formula, torch.compile",
        "impl_native": "PyTorch, native kernel",
        "fwd_bwd_ms": "forward + backward (ms)",
        "memory_floor": "floor: moving the data once",
        "true_class": "true class",
        "predicted_class": "predicted class",
        "truth": "true",
        "predicted": "predicted",
        "mini_batch": "mini-batch\n$x$: (N, C, H, W)",
        "layer": "convolution\nor linear layer",
        "batch_norm": "batch norm",
        "stats": "per channel, over N, H, W:\n$\\mu_B$, $\\sigma_B^2$",
        "normalise": "$\\hat{x} = (x - \\mu_B)\\,/\\sqrt{\\sigma_B^2 + \\varepsilon}$",
        "affine": "$y = \\gamma\\,\\hat{x} + \\beta$  ($\\gamma$, $\\beta$ learned)",
        "activation": "nonlinearity\n(ReLU, sigmoid)",
        "next": "next\nlayer",
        "running": "running averages of $\\mu_B$ and $\\sigma_B^2$\n(used instead in eval mode)",
        "seed_final": "final test accuracy of each seed (%)",
        "seed_difference": "with minus without batch norm\n(points, each seed)",
        "mean_interval": "mean and 95% interval",
        "seed": "seed",
        # the benchmark's plain-text table (bnlib.benchmark.format_table)
        "table_implementation": "implementation",
        "table_fwd_bwd_ms": "fwd+bwd ms",
        "table_x_native": "x native",
        "table_saved_mib": "saved MiB",
        "table_shape": (
            "shape {shape}: floor {mib} MiB moved, {ms} ms at this machine's copy bandwidth"
        ),
        "table_unavailable": "unavailable here: {reason}",
        "table_first_call": "(first call, compiling: {seconds} s)",
    },
    "fr": {
        "step": "pas d'entraînement",
        "sigmoid_input": "entrée d'une sigmoïde (15e, 50e, 85e centiles)",
        "test_accuracy": "exactitude sur le jeu de test (%)",
        "without_bn": "sans normalisation par lots",
        "with_bn": "avec normalisation par lots",
        "with_noisy_bn": "normalisation + bruit mouvant",
        "with_strong_noise": "normalisation + bruit mouvant fort",
        "with_shared_noise": "normalisation + bruit mouvant partagé (variante)",
        "with_strong_shared_noise": "normalisation + bruit mouvant partagé fort (variante)",
        "loss_range": "variation de la perte le long du gradient\n(max - min, échelle log)",
        "grad_change": "variation du gradient le long du gradient\n(norme l2 max, échelle log)",
        "smoothness": "$\\beta$-régularité effective\n(échelle log)",
        "with_dropout": "dropout",
        "with_bn_dropout": "normalisation + dropout",
        "train_loss": "perte d'entraînement (NLL)",
        "test_loss": "perte sur le jeu de test (NLL)",
        "accuracy": "exactitude (%)",
        "train_accuracy": "exactitude sur le jeu d'entraînement (%)",
        "final_test_accuracy": "exactitude finale sur le jeu de test (%)",
        "lr": "taux d'apprentissage (échelle log)",
        "init_gain": "échelle initiale des poids (gain, échelle log)",
        "batch_size": "taille du mini-lot (échelle log)",
        "noise_std": (
            "écart type des sorties normalisées d'une image\nd'un mini-lot à l'autre (échelle log)"
        ),
        "measured": "mesuré",
        "inverse_sqrt": "$\\propto 1/\\sqrt{N}$",
        "train": "jeu d'entraînement",
        "test": "jeu de test",
        "diverged": "divergé",
        "per_process_bn": "normalisation par processus",
        "sync_bn": "normalisation synchronisée",
        "layer_norm": "normalisation par couche",
        "group_norm": "normalisation par groupe",
        "bn_before_activation": "normalisation avant l'activation",
        "bn_after_activation": "normalisation après l'activation",
        "without_decay": "sans pénalisation des poids",
        "with_decay": "avec pénalisation des poids",
        "row_norm": "norme médiane d'une ligne de poids $\\|w_i\\|$",
        "row_angle": "angle dont tourne une ligne en un pas\n(radians, moyenne quadratique)",
        "equilibrium": "équilibre $\\sqrt{2\\eta\\lambda}$",
        "hidden_layer": "couche {i}",
        "layer_index": "couche cachée (1 : la première)",
        "grad_norm": "norme du gradient de ses poids\n(échelle logarithmique)",
        "without_bn_he": "sans normalisation, initialisation de He",
        "res_bn": "norm. par lots",
        "res_bn_zero_gamma": "norm. par lots, $\\gamma = 0$",
        "res_none": "aucune",
        "res_skipinit": "SkipInit",
        "res_fixup": "Fixup",
        "res_nf": "sans normaliseur",
        "final_accuracy": "exactitude finale en test (%)",
        "learning_rate_value": "taux d'apprentissage {lr}",
        "impl_naive": "formule du manuel, autograd",
        "impl_reference": "bnlib, Function lisible",
        "impl_fast": "bnlib, Function rapide",
        "impl_compiled": "formule du manuel, torch.compile",
        "impl_native": "PyTorch, noyau natif",
        "fwd_bwd_ms": "propagation avant + arrière (ms)",
        "memory_floor": "plancher : déplacer les données une fois",
        "true_class": "classe réelle",
        "predicted_class": "classe prédite",
        "truth": "réel",
        "predicted": "prédit",
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
        "seed_final": "exactitude finale de chaque graine (%)",
        "seed_difference": "avec moins sans normalisation\n(points, par graine)",
        "mean_interval": "moyenne et intervalle à 95 %",
        "seed": "graine",
        # the benchmark's plain-text table (bnlib.benchmark.format_table)
        "table_implementation": "implémentation",
        "table_fwd_bwd_ms": "av.+arr. ms",
        "table_x_native": "x natif",
        "table_saved_mib": "Mio gardés",
        "table_shape": (
            "forme {shape} : plancher de {mib} Mio déplacés, "
            "{ms} ms au débit de copie de cette machine"
        ),
        "table_unavailable": "indisponible ici : {reason}",
        "table_first_call": "(premier appel, compilation comprise : {seconds} s)",
    },
}

# Fashion-MNIST's ten classes (Xiao et al., 2017), in the dataset's label order.
CLASS_NAMES = {
    "fashion-mnist": {
        "en": [
            "T-shirt/top",
            "trouser",
            "pullover",
            "dress",
            "coat",
            "sandal",
            "shirt",
            "sneaker",
            "bag",
            "ankle boot",
        ],
        "fr": [
            "T-shirt/haut",
            "pantalon",
            "pull",
            "robe",
            "manteau",
            "sandale",
            "chemise",
            "basket",
            "sac",
            "bottine",
        ],
    },
    "mnist": {"en": [str(d) for d in range(10)], "fr": [str(d) for d in range(10)]},
}


def labels(lang: str) -> dict[str, str]:
    """The figure words of ``lang`` ("fr" or "en")."""
    if lang not in LABELS:
        raise ValueError(f"lang must be one of {sorted(LABELS)}, got {lang!r}")
    return LABELS[lang]


_SUPERSCRIPTS = str.maketrans(
    "-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079"
)


def formatted(value: float, spec: str, lang: str) -> str:
    """``format(value, spec)`` in the page's language. In French: a decimal comma (0.3 -> "0,3"),
    the minus sign, and a power of ten for the e-notation (2.4e-07 -> "2,4 × 10⁻⁷")."""
    text = format(value, spec)
    if lang != "fr":
        return text
    mantissa, e, exponent = text.replace("E", "e").partition("e")
    if e and exponent.lstrip("+-").isdigit():
        text = f"{mantissa} \u00d7 10{str(int(exponent)).translate(_SUPERSCRIPTS)}"
    return text.replace(".", ",").replace("-", "\u2212")


class Number:
    """A number that formats itself in the page's language, for f-strings that print:
    ``f"{Number(0.25, 'fr'):.2f}"`` is ``"0,25"``, ``f"{Number(0.25, 'en'):.2f}"`` is ``"0.25"``."""

    def __init__(self, value: float, lang: str) -> None:
        self.value, self.lang = value, lang

    def __format__(self, spec: str) -> str:
        return formatted(self.value, spec, self.lang)

    def __repr__(self) -> str:
        return f"Number({self.value!r}, {self.lang!r})"


# The error messages the chapters show (bnlib's, PyTorch's), in French: the English message as a
# pattern, and its French wording with the same groups
_FRENCH_MESSAGES = [
    (
        re.compile(
            r"Expected more than 1 value per channel when training, got input size (.+?): a batch "
            r"of one has no variance to normalise by; use a larger batch, "
            r"DataLoader\(\.\.\., drop_last=True\), or call model\.eval\(\) for inference"
        ),
        "Il faut plus d'une valeur par canal en entraînement, l'entrée est de taille \\1 : un lot "
        "d'un seul exemple n'a pas de variance par laquelle normaliser ; prenez un lot plus grand, "
        "DataLoader(..., drop_last=True), ou appelez model.eval() pour l'inférence",
    ),
    (  # PyTorch's own batch norm
        re.compile(r"Expected more than 1 value per channel when training, got input size (.+)"),
        "Il faut plus d'une valeur par canal en entraînement, l'entrée est de taille \\1",
    ),
]


def message(error: BaseException, lang: str) -> str:
    """An exception's message in the page's language: the messages of bnlib and PyTorch that the
    chapters show have a French wording; any other message, and every message in English, as
    raised."""
    text = str(error)
    if lang == "fr":
        for pattern, french in _FRENCH_MESSAGES:
            if pattern.fullmatch(text):
                return pattern.sub(french, text)
    return text
