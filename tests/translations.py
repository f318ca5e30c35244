"""The words the French chapters' code shows, and their English originals: the twins' table.

The French twin of a chapter runs the English twin's code, with French comments and French words
in what it prints or shows (progress bars, messages, docstrings). ``tests/test_book.py`` compares
the two twins' code modulo comments and modulo the pairs below: each key is a string literal of a
French code cell, and its value the literal of the English cell it translates, both as written in
the cell (quotes and ``f`` prefix included). A French literal that differs from its English twin
must be listed here, and every pair listed is used; identifiers, dictionary keys, glue names and
configuration values are never translated, so never listed.
"""

TRANSLATIONS = {
    # benefits
    'f"taux d\'apprentissage, {k}"': 'f"learning rates, {k}"',
    'f"échelles initiales, {k}"': 'f"initial scales, {k}"',
    '"régularisation"': '"regularisation"',
    '"normalisation bruitée"': '"noisy batch norm"',
    (
        '"""Le premier pas mesuré où l\'exactitude de test atteint ``accuracy`` (None : jamais)."""'
    ): (
        '"""The first recorded step at which a run\'s test accuracy reaches ``accuracy`` '
        '(None: never)."""'
    ),
    (
        '"""L\'exactitude de chaque graine au pas ``step`` '
        '(None : la dernière, tout le jeu de test)."""'
    ): (
        '"""Each seed\'s test accuracy at ``step`` '
        '(None: the last record, on the whole test set)."""'
    ),
    # distributed
    '"groupe de processus :"': '"process group:"',
    '"bras distribués"': '"data-parallel arms"',
    # how-it-works
    '"weight (gamma) :"': '"weight (gamma):"',
    '"bias (beta) :   "': '"bias (beta):   "',
    '"sans eps :"': '"without eps:"',
    '"avec eps :"': '"with eps:   "',
    '"(N, C) :"': '"(N, C):"',
    '"(N, C, H, W) :"': '"(N, C, H, W):"',
    '"moyenne par canal :  "': '"mean per channel:    "',
    '"variance par canal : "': '"variance per channel:"',
    '"canal 0 :"': '"channel 0:"',
    '"moyenne du lot :"': '"batch mean:  "',
    '"running_mean :  "': '"running_mean:"',
    '"float64 :"': '"float64:"',
    '"naïve :  "': '"naive:  "',
    '"bnlib :  "': '"bnlib:  "',
    '"PyTorch :"': '"PyTorch:"',
    '"(non biaisée)"': '"(unbiased)"',
    '"float16 :"': '"float16:"',
    '"\\nfloat32 :"': '"\\nfloat32:"',
    '"weight.grad :"': '"weight.grad:"',
    '"à la main :  "': '"by hand:    "',
    '"un lot d\'un seul exemple doit être refusé en mode entraînement"': (
        '"a batch of one must be refused in training mode"'
    ),
    (
        'f"x{scale} : moyenne seule, écart type {Number(mean_only.std(0).mean(), LANG):.3f} ; '
        'complète, {Number(full.std(0).mean(), LANG):.3f}"'
    ): (
        'f"x{scale}: mean only, std {Number(mean_only.std(0).mean(), LANG):.3f}; '
        'full, {Number(full.std(0).mean(), LANG):.3f}"'
    ),
    # in-practice
    '"laissé en mode entraînement :"': '"left in training mode:"',
    'f"contraste multiplié par {CONTRAST} :"': 'f"{CONTRAST} times the contrast:"',
    '"drop_last=False :"': '"drop_last=False:"',
    '"drop_last=True : "': '"drop_last=True: "',
    '"tailles de lot"': '"batch sizes"',
    # performance
    'f"{norm} : {Number(1000 * seconds, LANG):.1f} ms par pas"': (
        'f"{norm}: {Number(1000 * seconds, LANG):.1f} ms per step"'
    ),
    '"pas de GPU sur cette machine"': '"no GPU on this machine"',
    # pytorch-example
    'f"{name}.bias.grad : plus grande valeur absolue {Number(value, LANG):.1e}"': (
        'f"{name}.bias.grad: largest absolute value {Number(value, LANG):.1e}"'
    ),
    'f"{key} :"': 'f"{key}:"',
    'f"{Number(100 * v, LANG):.1f} %"': 'f"{Number(100 * v, LANG):.1f}%"',
    'f"{device} : {device_name}"': 'f"{device}: {device_name}"',
    'f"mode {mode}, lots de {BATCHES[label]:4} : {per_seed}"': (
        'f"{mode} mode, batches of {BATCHES[label]:4}: {per_seed}"'
    ),
    '"bn1.running_mean après l\'entraînement :    "': '"bn1.running_mean after training:  "',
    '"après une évaluation en mode entraînement :"': '"after evaluating in training mode:"',
    'f"pertes : plus grand écart {Number(convert_loss_diff, LANG):.1e}"': (
        'f"losses: largest difference {Number(convert_loss_diff, LANG):.1e}"'
    ),
    'f"poids : plus grand écart {Number(convert_weight_diff, LANG):.1e}"': (
        'f"weights: largest difference {Number(convert_weight_diff, LANG):.1e}"'
    ),
    'f"normalisation {norm} : {Number(1000 * step_seconds[norm], LANG):.1f} ms par pas"': (
        'f"{norm} batch norm: {Number(1000 * step_seconds[norm], LANG):.1f} ms per step"'
    ),
}
