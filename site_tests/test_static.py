"""The built HTML, read as files: offline, bilingual, with well-formed Colab links."""

import importlib.util
import json
import re
from html import escape

import pytest
import yaml

from conftest import ROOT, book_pages, language_of, source_of, twin_page

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
EXTERNAL = re.compile(r"^(?:https?:)?//", re.IGNORECASE)
RESOURCE_ATTRS = re.compile(
    r"<(script|link|img|iframe|source|video|audio|embed)\b[^>]*?\b(src|href)=[\"']([^\"']+)[\"']",
    re.IGNORECASE,
)
CSS_URLS = re.compile(r"(?:url\(\s*[\"']?|@import\s+[\"'])([^\"')\s]+)", re.IGNORECASE)
CHAPTER_PAGES = [p for p in book_pages() if "/chapters/" in p]


def external_resources(site):
    found = []
    for path in site.rglob("*.html"):
        for tag, _attr, url in RESOURCE_ATTRS.findall(path.read_text(errors="replace")):
            if EXTERNAL.match(url):
                found.append((str(path.relative_to(site)), tag, url))
    for path in site.rglob("*.css"):
        for url in CSS_URLS.findall(path.read_text(errors="replace")):
            if EXTERNAL.match(url):
                found.append((str(path.relative_to(site)), "css", url))
    return found


def test_the_site_loads_nothing_from_outside(site):
    """No script, style sheet, font, image or frame from another host (links to follow are fine)."""
    assert external_resources(site) == []


def test_the_check_sees_an_external_script(tmp_path):
    (tmp_path / "page.html").write_text('<script src="https://cdn.example.org/x.js"></script>')
    (tmp_path / "style.css").write_text("@font-face { src: url(https://fonts.example.org/f.woff) }")
    assert [f[1] for f in external_resources(tmp_path)] == ["script", "css"]


def test_no_widget_state_or_cdn_in_outputs(site):
    for path in site.rglob("*.html"):
        text = path.read_text(errors="replace")
        assert "application/vnd.jupyter.widget" not in text, path
        assert "cdn.jsdelivr" not in text and "unpkg.com" not in text, path


def test_math_is_served_from_the_site(site):
    for lang in ("fr", "en"):
        page = (site / f"{lang}/chapters/{lang}/how-it-works.html").read_text()
        assert re.search(r'<script[^>]+src="[./]*_static/mathjax/tex-chtml\.js', page)
        assert (site / lang / "_static/mathjax/tex-chtml.js").is_file()


@pytest.mark.parametrize("page", CHAPTER_PAGES)
def test_each_chapter_declares_its_language_and_links_its_twin(site, page):
    lang = language_of(page)
    other = "en" if lang == "fr" else "fr"
    html = (site / page).read_text()
    assert f'<html lang="{lang}"' in html
    switch = re.search(r'<p class="language-switch"><a href="([^"]+)" hreflang="(\w+)"', html)
    assert switch and switch.group(2) == other
    assert (site / page).parent.joinpath(switch.group(1)).resolve() == (
        site / twin_page(page)
    ).resolve()


@pytest.mark.parametrize(
    "page", [p for p in CHAPTER_PAGES if (ROOT / source_of(p)).with_suffix(".ipynb").exists()]
)
def test_colab_launch_link_is_well_formed(site, page):
    repository = CONFIG["repository"]
    owner_repo = repository["url"].removeprefix("https://github.com/")
    notebook = source_of(page) + ".ipynb"
    expected = f"https://colab.research.google.com/github/{owner_repo}/blob/{repository['branch']}/{notebook}"
    assert expected in (site / page).read_text()


HREFS = re.compile(r"<a\b[^>]*?\bhref=[\"']([^\"'#?]*)(?:[#?][^\"']*)?[\"']", re.IGNORECASE)


def broken_links(site):
    """Internal links (relative hrefs) whose target file does not exist in the built site."""
    broken = []
    for page in site.rglob("*.html"):
        for href in HREFS.findall(page.read_text(errors="replace")):
            if not href or re.match(r"^[a-z][a-z0-9+.-]*:|^//", href, re.IGNORECASE):
                continue  # same page, or another site
            target = (page.parent / href).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append((str(page.relative_to(site)), href))
    return broken


def test_no_broken_internal_links(site):
    assert broken_links(site) == []


def test_the_link_check_sees_a_broken_link(tmp_path):
    (tmp_path / "a.html").write_text('<a href="b.html#x">ok</a> <a href="missing.html">no</a>')
    (tmp_path / "b.html").write_text('<a href="https://example.org/">elsewhere</a>')
    assert broken_links(tmp_path) == [("a.html", "missing.html")]


PASTED = re.compile(r'<span class="pasted-text">([^<]*)</span>')
DECIMAL_POINT = re.compile(r"\d\.\d")


def test_glued_numbers_are_written_the_french_way_on_french_pages(site):
    pasted = {
        lang: [
            text
            for page in CHAPTER_PAGES
            if f"/{lang}/" in page
            for text in PASTED.findall((site / page).read_text())
        ]
        for lang in ("fr", "en")
    }
    assert [text for text in pasted["fr"] if DECIMAL_POINT.search(text)] == []
    assert any(re.search(r"\d,\d", text) for text in pasted["fr"])
    assert any(DECIMAL_POINT.search(text) for text in pasted["en"])  # English keeps its points


def test_french_number_format():
    spec = importlib.util.spec_from_file_location("bilingual", ROOT / "_ext" / "bilingual.py")
    bilingual = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bilingual)
    assert bilingual.french_number("12,345.6") == "12\u202f345,6"
    assert bilingual.french_number("0.81") == "0,81" and bilingual.french_number("9.2e-14") == (
        "9,2e-14"
    )
    assert bilingual.french_number("(128, 64, 24, 24)") == "(128, 64, 24, 24)"  # a tuple


def _checks_words():
    spec = importlib.util.spec_from_file_location("checks_cells", ROOT / "scripts/checks_cells.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.WORDS


@pytest.mark.parametrize(
    "page", [p for p in CHAPTER_PAGES if (ROOT / source_of(p)).with_suffix(".ipynb").exists()]
)
def test_the_checks_are_folded_under_their_toggle(site, page):
    """Each checks cell of the notebook is on the page, its code folded under a toggle that says,
    in the page's language, that these are the checks."""
    show, hide = _checks_words()[language_of(page)]
    notebook = json.loads(
        (ROOT / source_of(page)).with_suffix(".ipynb").read_text(encoding="utf-8")
    )
    expected = sum(
        1
        for c in notebook["cells"]
        if c.get("metadata", {}).get("mystnb", {}).get("code_prompt_show") == show
    )
    html = (site / page).read_text()
    folded = re.findall(
        r'<details class="admonition hide above-input">\s*<summary[^>]*>\s*'
        r'<p class="collapsed admonition-title">([^<]*)</p>\s*'
        r'<p class="expanded admonition-title">([^<]*)</p>',
        html,
    )
    assert expected > 0 and folded.count((escape(show), escape(hide))) == expected
