"""Each language is its own edition: its pages, its sidebar, its interface words and its search
in that language alone, under a root page that lets the reader choose (``make book``)."""

import re
from html.parser import HTMLParser

import pytest

from conftest import book_pages, language_of

PAGES = [p for p in book_pages() if "/chapters/" in p]
# The theme's words a French reader met on French pages when both languages were one book
ENGLISH_INTERFACE = [
    "Back to top",
    "Contents",
    "Search",
    "Skip to main content",
    "previous",
    "next",
    "Print to PDF",
    "Download source file",
    "Download this page",
    "Fullscreen mode",
    "Toggle primary sidebar",
    "Search this book",
    "On this page",
    "Source repository",
    "Show code cell",
    "Link to this heading",
    "By The",
]


class Interface(HTMLParser):
    """What a page shows and says outside its article: text, titles, labels, placeholders; and
    the links of its sidebar."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.depth = {"article": 0, "script": 0, "style": 0, "nav": 0}
        self.words, self.sidebar_links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self.depth:
            self.depth[tag] += 1
        if not self.depth["article"]:
            for name in ("title", "aria-label", "placeholder", "alt", "data-bs-title"):
                if attrs.get(name):
                    self.words.append(attrs[name])
        if tag == "a" and self.depth["nav"] and attrs.get("href"):
            self.sidebar_links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag in self.depth and self.depth[tag]:
            self.depth[tag] -= 1

    def handle_data(self, data):
        if not (self.depth["article"] or self.depth["script"] or self.depth["style"]):
            if data.strip():
                self.words.append(data.strip())


def interface(html: str) -> Interface:
    parser = Interface()
    parser.feed(html)
    return parser


def test_the_root_page_lets_the_reader_choose(site):
    html = (site / "index.html").read_text()
    links = re.findall(r'<a href="([^"]+)" hreflang="(\w+)"', html)
    assert sorted(lang for _, lang in links) == ["en", "fr"]
    for href, lang in links:
        assert href == f"{lang}/chapters/{lang}/index.html"
        assert (site / href).is_file()


@pytest.mark.parametrize("page", [p for p in PAGES if language_of(p) == "fr"])
def test_french_pages_have_a_french_interface_and_a_french_sidebar(site, page):
    seen = interface((site / page).read_text())
    english = [
        word
        for word in seen.words
        for phrase in ENGLISH_INTERFACE
        if re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", word)
    ]
    assert english == []
    chapters = [href for href in seen.sidebar_links if href.split("#")[0].endswith(".html")]
    assert chapters, "the page has a sidebar of chapters"
    assert not [href for href in chapters if "/en/" in href or href.startswith("../en")]


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_each_edition_is_built_in_its_language(site, lang):
    options = (site / lang / "_static" / "documentation_options.js").read_text()
    assert re.search(rf"LANGUAGE: ['\"]{lang}['\"]", options)
    pages = [p for p in PAGES if language_of(p) == lang]
    assert all((site / p).is_file() for p in pages)
    other = "en" if lang == "fr" else "fr"
    assert not (site / lang / "chapters" / other).exists(), "an edition holds one language"


def test_the_french_search_stems_french_words(site):
    language_data = (site / "fr" / "_static" / "language_data.js").read_text()
    assert "FrenchStemmer" in language_data or "french" in language_data.lower()
