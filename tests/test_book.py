"""The book's sources: French and English twins match, notebooks are clean, Colab set-up agrees
with the book's configuration."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
NOTEBOOKS = sorted(p.relative_to(CHAPTERS / "fr") for p in (CHAPTERS / "fr").glob("*.ipynb"))
LANG_CELL = re.compile(r'^LANG = "(fr|en)"$')


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


@pytest.mark.parametrize("name", NOTEBOOKS, ids=str)
def test_twins_share_their_code_but_the_language_cell(name):
    fr, en = cells(CHAPTERS / "fr" / name, "code"), cells(CHAPTERS / "en" / name, "code")
    assert len(fr) == len(en)
    differing = [(a, b) for a, b in zip(fr, en, strict=True) if a != b]
    assert len(differing) <= 1, f"code cells differ beyond the LANG cell: {differing}"
    for a, b in differing:
        assert LANG_CELL.match(a).group(1) == "fr" and LANG_CELL.match(b).group(1) == "en"


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
