"""The book's sources: French and English twins match, notebooks are clean, Colab set-up agrees
with the book's configuration."""

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from translations import TRANSLATIONS

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
NOTEBOOKS = sorted(p.relative_to(CHAPTERS / "fr") for p in (CHAPTERS / "fr").glob("*.ipynb"))
LANG_CELL = re.compile(r'^LANG = "(fr|en)"$')
IPYTHON_LINE = re.compile(r"^\s*[%!]")


def pages(lang):
    return {
        p.relative_to(CHAPTERS / lang)
        for p in (CHAPTERS / lang).rglob("*")
        if p.suffix in (".ipynb", ".md")
    }


def cells(path, kind):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == kind]


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [c["file"] for part in toc["parts"] for c in part["chapters"]]


def test_same_chapters_in_both_languages_and_in_the_toc():
    assert pages("fr") == pages("en") and NOTEBOOKS
    listed = toc_files()
    for lang in ("fr", "en"):
        in_toc = [f for f in listed if f.startswith(f"chapters/{lang}/")]
        assert sorted(in_toc) == sorted(f"chapters/{lang}/{p.with_suffix('')}" for p in pages(lang))
    # the two parts list their chapters in the same order
    assert [f.split("/", 2)[2] for f in listed if "/fr/" in f] == [
        f.split("/", 2)[2] for f in listed if "/en/" in f
    ]


def code_cells(path):
    """(id, source) of each code cell of a notebook."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return [
        (c.get("id"), "".join(c["source"])) for c in notebook["cells"] if c["cell_type"] == "code"
    ]


def parse_cell(source):
    """A code cell as Python: its tree, the source the tree was parsed from, and its IPython lines
    (``%pip ...``, ``!ls``), which are not Python, kept as raw text and masked by ``pass``."""
    lines = source.split("\n")
    ipython = [line for line in lines if IPYTHON_LINE.match(line)]
    python = "\n".join(
        line[: len(line) - len(line.lstrip())] + "pass" if IPYTHON_LINE.match(line) else line
        for line in lines
    )
    return ast.parse(python), python, ipython


def string_literals(tree, source):
    """The source text of each string literal of a tree (an f-string counts as one), in order."""
    found = []

    class Finder(ast.NodeVisitor):
        def visit_JoinedStr(self, node):  # its parts belong to it: not visited on their own
            found.append(ast.get_source_segment(source, node))

        def visit_Constant(self, node):
            if isinstance(node.value, str):
                found.append(ast.get_source_segment(source, node))

    Finder().visit(tree)
    return found


class ToEnglish(ast.NodeTransformer):
    """Replaces each string literal found in ``translations`` by its English original."""

    def __init__(self, source, translations):
        self.source, self.translations = source, translations

    def swap(self, node):
        text = ast.get_source_segment(self.source, node)
        if text not in self.translations:
            return node
        return ast.parse(self.translations[text], mode="eval").body

    def visit_JoinedStr(self, node):
        return self.swap(node)

    def visit_Constant(self, node):
        return self.swap(node) if isinstance(node.value, str) else node


def assert_same_code(cell_id, french, english, translations=TRANSLATIONS):
    """The French cell is the English one but for its comments and the translated strings: the
    same IPython lines, and the same Python once each French literal of ``translations`` is
    replaced by its English original."""
    fr_tree, fr_source, fr_ipython = parse_cell(french)
    en_tree, en_source, en_ipython = parse_cell(english)
    assert fr_ipython == en_ipython, f"cell {cell_id}: IPython lines differ: {fr_ipython}"
    for fr, en in zip(
        string_literals(fr_tree, fr_source), string_literals(en_tree, en_source), strict=False
    ):
        assert translations.get(fr, fr) == en, (
            f"cell {cell_id}: the French literal {fr} is not the English {en} "
            "nor its translation in tests/translations.py"
        )
    translated = ToEnglish(fr_source, translations).visit(fr_tree)
    assert ast.dump(translated) == ast.dump(en_tree), (
        f"cell {cell_id}: the code differs from the English twin's beyond comments and the "
        f"strings of tests/translations.py:\n{french}"
    )


@pytest.mark.parametrize("name", NOTEBOOKS, ids=str)
def test_twins_share_their_code_but_the_language_cell(name):
    """Twin code cells differ only in comments, in the strings of ``TRANSLATIONS`` and in the
    LANG cell, ``LANG = "fr"`` in French and ``LANG = "en"`` in English."""
    fr, en = code_cells(CHAPTERS / "fr" / name), code_cells(CHAPTERS / "en" / name)
    assert len(fr) == len(en)
    for (cell_id, french), (_, english) in zip(fr, en, strict=True):
        languages = [m and m.group(1) for m in (LANG_CELL.match(french), LANG_CELL.match(english))]
        if any(languages):
            assert languages == ["fr", "en"], f"cell {cell_id}: the LANG cells are {languages}"
        else:
            assert_same_code(cell_id, french, english)


def test_every_translation_is_used():
    """``TRANSLATIONS`` holds strings of the French cells, and nothing else: no stale pair."""
    used = set()
    for name in NOTEBOOKS:
        for _, source in code_cells(CHAPTERS / "fr" / name):
            tree, python, _ = parse_cell(source)
            used.update(string_literals(tree, python))
    assert set(TRANSLATIONS) <= used, sorted(set(TRANSLATIONS) - used)


ENGLISH_CELL = """\
import sys

if "google.colab" in sys.modules:  # on Colab: install bnlib
    %pip install -q bnlib
x = 3 + 2 * torch.randn(8, 4)  # a mini-batch
print("weight (gamma):", x.mean(0), f"{x.shape[0]} examples")
"""


def test_twin_cells_may_differ_in_comments_and_registered_strings():
    """Comments may differ, one line or several, and the strings of the table."""
    french = (
        ENGLISH_CELL.replace("# on Colab: install bnlib", "# sur Colab : installer bnlib")
        .replace("# a mini-batch", "# un mini-lot,\n# sur deux lignes")
        .replace('"weight (gamma):"', '"weight (gamma) :"')
        .replace('f"{x.shape[0]} examples"', 'f"{x.shape[0]} exemples"')
    )
    table = {
        '"weight (gamma) :"': '"weight (gamma):"',
        'f"{x.shape[0]} exemples"': 'f"{x.shape[0]} examples"',
    }
    assert_same_code("cell-fr", french, ENGLISH_CELL, table)


@pytest.mark.parametrize(
    "old, new",
    [
        ("3 + 2 *", "3 + 4 *"),  # a number
        ("x.mean(0)", "x.mean(1)"),  # an argument
        ("x = 3", "y = 3"),  # a name
        ("%pip install -q bnlib", "%pip install bnlib"),  # an IPython line
        ('print("weight (gamma):", x.mean(0),', 'print("weight (gamma) :", x.mean(0), x,'),
    ],
)
def test_twin_cells_may_not_differ_in_code(old, new):
    """Registered strings aside, a change in the code fails, and the message names the cell."""
    french = ENGLISH_CELL.replace(old, new)
    assert french != ENGLISH_CELL
    with pytest.raises(AssertionError, match="^cell cell-fr: "):
        assert_same_code(
            "cell-fr", french, ENGLISH_CELL, {'"weight (gamma) :"': '"weight (gamma):"'}
        )


def test_an_unregistered_string_fails_with_its_cell_and_literal():
    french = ENGLISH_CELL.replace('"google.colab"', '"google.colab.fr"')
    with pytest.raises(
        AssertionError, match='^cell cell-fr: the French literal "google.colab.fr" '
    ):
        assert_same_code("cell-fr", french, ENGLISH_CELL, {})


@pytest.mark.parametrize("name", NOTEBOOKS, ids=str)
def test_twins_have_the_same_sections_and_figures(name):
    def outline(lang):
        text = "\n".join(cells(CHAPTERS / lang / name, "markdown"))
        headings = [len(h) for h in re.findall(r"^(#+) ", text, flags=re.MULTILINE)]
        figures = len(re.findall(r"!\[|```\{(?:figure|glue:figure)", text))
        return headings, figures

    assert outline("fr") == outline("en")


@pytest.mark.parametrize(
    "path", sorted(CHAPTERS.rglob("*.ipynb")), ids=lambda p: str(p.relative_to(CHAPTERS))
)
def test_notebooks_are_committed_clean_and_install_bnlib_on_colab(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    first = "".join(code[0]["source"])
    repository = CONFIG["repository"]
    assert 'if "google.colab" in sys.modules:' in first
    assert f'git+{repository["url"]}@{repository["branch"]}"' in first
    assert repository["branch"] == "main"


def test_colab_launch_is_configured():
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", CONFIG["repository"]["url"])


def _checks_module():
    spec = importlib.util.spec_from_file_location("checks_cells", ROOT / "scripts/checks_cells.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checks_cells = _checks_module()


@pytest.mark.parametrize(
    "path", sorted(CHAPTERS.rglob("*.ipynb")), ids=lambda p: str(p.relative_to(CHAPTERS))
)
def test_the_plumbing_is_behind_the_checks_toggle(path):
    """No visible code cell ends with glue or asserts that could move to a checks cell, and every
    checks cell (all glue and asserts) is folded, with the toggle's words in its language."""
    lang = path.parent.name
    notebook = json.loads(path.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        tags = cell["metadata"].get("tags", [])
        show, hide = checks_cells.WORDS[lang]
        made = cell["metadata"].get("mystnb", {}).get("code_prompt_show") in {
            words[0] for words in checks_cells.WORDS.values()
        }
        if made or checks_cells.all_plumbing(source):
            assert "hide-input" in tags, f"{cell['id']}: a checks cell must be folded"
            assert cell["metadata"]["mystnb"] == {
                "code_prompt_show": show,
                "code_prompt_hide": hide,
            }, cell["id"]
        elif "hide-input" not in tags:
            assert checks_cells.plan(source) is None, (
                f"{cell['id']}: its glue and asserts can move to a checks cell: run "
                "python scripts/checks_cells.py"
            )


def test_checks_move_after_the_teaching_code_only_where_nothing_changes():
    plan = checks_cells.plan
    # the glue and the final assert go after the teaching code, in their order
    cell = 'x = f()\nglue("x", x, display=False)\ny = g(x)\nassert y > 0'
    assert plan(cell) == ([0, 2], [1, 3])
    head, tail = checks_cells.split_source(cell, [0, 2], [1, 3])
    assert head == "x = f()\ny = g(x)" and tail == 'glue("x", x, display=False)\nassert y > 0'
    # a guard stays where it stops the cell; a glue of a value changed later stays too
    assert plan("x = f()\nassert x is not None\ny = g(x)") is None
    assert plan('x = [1]\nglue("x", x)\nx.append(2)') is None
    # the teaching part would display its last expression: nothing moves
    assert plan('fig\nglue("n", 3, display=False)') is None
    # all plumbing: the whole cell is checks; no plumbing at all: nothing to do
    assert plan('glue("n", 3, display=False)\nassert n == 3') == ([], [0, 1])
    assert plan("x = f()") is None and plan('%pip install bnlib\nglue("n", 3)') is None


def test_the_glossary_has_the_same_entries_in_both_editions():
    """One entry per term in each language, each with its label, and both editions' chapters
    link to their glossary as often."""
    en = re.findall(r"^\(en-glossary-([\w-]+)\)=$", (CHAPTERS / "en/glossary.md").read_text(), re.M)
    fr = re.findall(
        r"^\(fr-glossaire-([\w-]+)\)=$", (CHAPTERS / "fr/glossary.md").read_text(), re.M
    )
    assert len(en) == len(fr) == len(set(en)) == len(set(fr)) and len(en) >= 30
    for name in NOTEBOOKS:
        links = {
            lang: sum(
                len(re.findall(rf"<{prefix}-[\w-]+>`", text))
                for text in cells(CHAPTERS / lang / name, "markdown")
            )
            for lang, prefix in (("en", "en-glossary"), ("fr", "fr-glossaire"))
        }
        assert links["en"] == links["fr"], f"{name}: glossary links {links}"
