"""French typography on the built French pages: read as a French reader reads them, the prose
only (code, outputs, math and URLs are left as they are)."""

import importlib.util
import re
from html.parser import HTMLParser

import pytest

from conftest import ROOT, book_pages

FRENCH = [p for p in book_pages() if "/chapters/fr/" in p]
ENGLISH = [p for p in book_pages() if "/chapters/en/" in p]
NNBSP, NBSP = "\u202f", "\u00a0"

spec = importlib.util.spec_from_file_location("bilingual", ROOT / "_ext" / "bilingual.py")
bilingual = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bilingual)


class Prose(HTMLParser):
    """The text of a page's article, without code, outputs, math, scripts or links that show
    their own URL."""

    SKIPPED_TAGS = {"pre", "code", "script", "style", "svg"}
    SKIPPED_CLASSES = {"math", "highlight", "cell_output", "language-switch"}
    VOID = {"br", "img", "hr", "meta", "link", "input", "source", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []  # (tag, skipped) of the open elements
        self.in_article = 0
        self.parts = []

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        skipped = (
            tag in self.SKIPPED_TAGS
            or bool(classes & self.SKIPPED_CLASSES)
            or (
                tag == "a"
                and (attrs.get("href") or "").startswith("http")
                and "external" in classes
            )
        )
        self.in_article += tag == "article"
        self.stack.append((tag, skipped))

    def handle_endtag(self, tag):
        if tag not in (open_tag for open_tag, _ in self.stack):
            return  # a stray end tag (HTML allows some): nothing to close
        while self.stack:
            open_tag, _ = self.stack.pop()
            self.in_article -= open_tag == "article"
            if open_tag == tag:
                break

    def handle_data(self, data):
        if self.in_article and not any(skipped for _, skipped in self.stack):
            self.parts.append(data)


def prose(html: str) -> str:
    parser = Prose()
    parser.feed(html)
    return "".join(parser.parts)


BREAKABLE_BEFORE = re.compile(r" [;:!?»]|\d ?%")
BREAKABLE_AFTER = re.compile(r"« ")
E_NOTATION = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)?[eE][+-]?\d+\b")
DECIMAL_POINT = re.compile(r"(?<![\w.,:/])\d+\.\d+(?![\w/.])")
UNSEPARATED = re.compile(r"(?<![\w.,:/\u202f])\d{5,}(?![\w/])")
HYPHEN_MINUS = re.compile(r"(?<![\w)\]])-\d")


def context(text: str, match: re.Match) -> str:
    return text[max(0, match.start() - 30) : match.end() + 30]


@pytest.mark.parametrize("page", FRENCH)
def test_french_prose_follows_french_typography(site, page):
    text = prose((site / page).read_text())
    assert len(text) > 1000, "the prose extraction found almost nothing"
    problems = {
        name: [context(text, m) for m in pattern.finditer(text)]
        for name, pattern in {
            "breakable or no space before ; : ! ? » %": BREAKABLE_BEFORE,
            "breakable space after «": BREAKABLE_AFTER,
            "e-notation": E_NOTATION,
            "decimal point": DECIMAL_POINT,
            "thousands not separated": UNSEPARATED,
            "hyphen for a minus sign": HYPHEN_MINUS,
        }.items()
    }
    assert {name: found for name, found in problems.items() if found} == {}
    assert NNBSP in text or NBSP in text


@pytest.mark.parametrize("page", ENGLISH)
def test_english_pages_keep_english_typography(site, page):
    text = prose((site / page).read_text())
    assert re.search(r"\w[?:;]", text), "English puts no space before ? : ;"
    assert not re.search(f"[{NNBSP}{NBSP}][;:!?]", text)


def test_the_prose_extraction_leaves_out_code_math_and_urls():
    html = (
        "<article><p>Texte : <code>x = 1.5e-3 ?</code> <span class='math'>\\(a-1\\)</span>"
        "<a class='reference external' href='https://x.org/?q=1.5'>https://x.org/?q=1.5</a>"
        "<div class='cell_output'><pre>0.5 ; 20000</pre></div></p></article><p>hors : 2.5</p>"
    )
    assert prose(html).split() == ["Texte", ":"]


@pytest.mark.parametrize(
    "english, french",
    [
        ("C'est quoi ?", "C'est quoi\u202f?"),
        ("« un mot »", "«\u202fun mot\u202f»"),
        ("Attention: il vaut 0.81; soit!", "Attention\u00a0: il vaut 0,81\u202f; soit\u202f!"),
        ("une erreur de 2.4e-07", "une erreur de 2,4\u202f×\u202f10⁻⁷"),
        ("eps = 1e-5", "eps = 10⁻⁵"),
        (
            "20000 images, 43264 valeurs, 1000 pas",
            "20\u202f000 images, 43\u202f264 valeurs, 1000 pas",
        ),
        ("de -0.6 à +1.1 points", "de \u22120,6 à +1,1 points"),
        ("1.5x plus lent", "1,5x plus lent"),
        ("83.6 % contre 80%", "83,6\u202f% contre 80\u202f%"),
    ],
)
def test_french_typography(english, french):
    assert bilingual.french_typography(english) == french


@pytest.mark.parametrize(
    "kept",
    [
        "https://example.org/page?x=1",
        "arXiv:1502.03167",
        "doi:10.1109/CVPR.2016.90",
        "10:30",
        "ResNet-50",
        "les chiffres 0-9",
        "(128, 64, 24, 24)",
        "torch.compile",
    ],
)
def test_french_typography_leaves_names_urls_and_tuples_alone(kept):
    assert bilingual.french_typography(kept) == kept
