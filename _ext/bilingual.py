"""Bilingual pages: each chapter page declares its own language and links to its twin.

French chapters live under ``chapters/fr/`` and English ones under ``chapters/en/``, at the same
paths. On every chapter page this sets ``<html lang="...">``, adds a visible link to the twin page
and a ``<link rel="alternate" hreflang>`` for it, and warns (an error under ``-W``) when the twin
is missing. The twin is in the same book, or, when each language is built as its own edition
(``bilingual_edition = "fr"``, see ``scripts/editions.py``), in the other edition's folder.
French pages get French typography from the build (``french_typography``):
no-break spaces before ``; : ! ? »`` and after ``«``, a decimal comma, thin spaces between
thousands, powers of ten instead of e-notation, the minus sign, in the prose and in glued numbers
(Python's format specs know only one way), never in code or math.
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

from docutils import nodes
from sphinx import locale
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.i18n import CatalogInfo

logger = logging.getLogger(__name__)

LANGUAGES = {
    "fr": {"switch": "Lire cette page en français"},
    "en": {"switch": "Read this page in English"},
}


def page_language(docname: str) -> str | None:
    """ "fr" or "en" for a chapter page, None for pages outside ``chapters/<lang>/``."""
    parts = docname.split("/")
    if len(parts) >= 3 and parts[0] == "chapters" and parts[1] in LANGUAGES:
        return parts[1]
    return None


def twin_of(docname: str) -> tuple[str, str] | None:
    """The twin page's language and docname, or None outside the chapters."""
    lang = page_language(docname)
    if lang is None:
        return None
    other = next(code for code in LANGUAGES if code != lang)
    return other, "/".join(["chapters", other, *docname.split("/")[2:]])


THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # 12,345 (but not a tuple's "2, 3")
DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")


def french_number(text: str) -> str:
    """``12,345.6`` -> ``12\u202f345,6``: the thousands separator first, then the decimal point."""
    return DECIMAL_POINT.sub(",", THOUSANDS.sub("\u202f", text))


# French typography (Imprimerie nationale): a narrow no-break space (U+202F) before ; ! ? % and
# » and after «, a no-break space (U+00A0) before :, numbers with a decimal comma, narrow no-break
# spaces between thousands, powers of ten rather than e-notation, and the minus sign (U+2212).
NNBSP, NBSP, MINUS = "\u202f", "\u00a0", "\u2212"
_SPACES = "[ \u00a0\u202f]"
_NOT_IN_A_WORD = r"(?<![\w.,:/\u202f])"  # a number on its own, not part of a name, URL or DOI
_NUMBER_END = r"(?!(?!x\b)[\w/]|[.,]\d)"  # 1.5x is a number, 1.5b or 1.5/2 not
_E_NOTATION = re.compile(_NOT_IN_A_WORD + r"(\d+(?:[.,]\d+)?)[eE]([+\-\u2212]?)(\d+)" + _NUMBER_END)
_DECIMAL = re.compile(_NOT_IN_A_WORD + r"(\d+)\.(\d+)" + _NUMBER_END)
_LONG_INTEGER = re.compile(_NOT_IN_A_WORD + r"(\d{5,})" + _NUMBER_END)
_NEGATIVE = re.compile(r"(?<![\w)\]])-(?=\d)")
_SUPERSCRIPTS = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def _power_of_ten(match: re.Match) -> str:
    mantissa, sign, exponent = match.groups()
    power = "10" + (("-" if sign in ("-", MINUS) else "") + str(int(exponent))).translate(
        _SUPERSCRIPTS
    )
    mantissa = mantissa.replace(".", ",")
    return power if mantissa == "1" else f"{mantissa}{NNBSP}×{NNBSP}{power}"


def _thousands(match: re.Match) -> str:
    digits = match.group(1)
    head = len(digits) % 3 or 3
    return NNBSP.join([digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)])


def french_typography(text: str) -> str:
    """Prose written the French way: ``"vaut 2.4e-07 ; soit -0.5: 20000 images!"`` becomes
    ``"vaut 2,4 × 10⁻⁷ ; soit −0,5 : 20 000 images !"`` (with no-break spaces). Apply it to
    prose only, never to code, math or a URL."""
    text = _E_NOTATION.sub(_power_of_ten, text)
    text = _DECIMAL.sub(r"\1,\2", text)
    text = _LONG_INTEGER.sub(_thousands, text)
    text = _NEGATIVE.sub(MINUS, text)
    text = re.sub(r"(?<=\d)" + _SPACES + "?%", NNBSP + "%", text)  # 95 %, not 95%
    # before a space, a closing sign or the end: not the ? of a URL's query
    text = re.sub(_SPACES + r"*([;!?»])(?=[\s)\]»\"'.,;:!?]|$)", NNBSP + r"\1", text)
    text = re.sub(r"«" + _SPACES + "*", "«" + NNBSP, text)
    # a colon after a word (or a closing sign), before a space or the end: not 10:30, not https:
    return re.sub(_SPACES + r"*:(?=\s|$)", NBSP + ":", text)


def _is_prose(node: nodes.Text) -> bool:
    """Whether a text node is prose: not inside code, math, raw HTML, or a link that shows its
    own URL."""
    for parent in _ancestors(node):
        if isinstance(parent, (nodes.literal, nodes.FixedTextElement, nodes.math, nodes.raw)):
            return False
        if isinstance(parent, nodes.reference) and parent.get("refuri", "") == parent.astext():
            return False
    return True


def _ancestors(node: nodes.Node):
    parent = node.parent
    while parent is not None:
        yield parent
        parent = parent.parent


def french_pages(app: Sphinx, doctree: nodes.document) -> None:
    """On French pages: the numbers that ``{glue:text}`` pasted (nodes of class
    ``pasted-text``: 0.81 reads 0,81, 12,345 reads 12 345), then French typography on all the
    prose, titles included (before the table of contents records them)."""
    if page_language(app.env.docname) != "fr":
        return
    for node in list(doctree.findall(nodes.inline)):
        if "pasted-text" in node["classes"]:
            text = node.astext()
            if french_number(text) != text:
                node.clear()
                node += nodes.Text(french_number(text))
    for node in list(doctree.findall(nodes.Text)):
        if _is_prose(node):
            text = french_typography(str(node))
            if re.match(_SPACES + "?%", text) and _text_before(node)[-1:].isdigit():
                text = NNBSP + text.lstrip(" \u00a0\u202f")  # a glued number, then " %"
            if text != str(node):
                node.parent.replace(node, nodes.Text(text))


def _text_before(node: nodes.Text) -> str:
    """The text of the node just before this one in its paragraph (a glued number, say)."""
    siblings = node.parent.children
    index = siblings.index(node)
    return siblings[index - 1].astext() if index > 0 else ""


def check_twins(app: Sphinx, env) -> None:
    """Every chapter page has its twin: in this build, or, in an edition, among the sources (the
    twin is built by the other edition)."""
    for docname in sorted(env.found_docs):
        twin = twin_of(docname)
        if twin is None:
            continue
        if app.config.bilingual_edition:
            found = any(Path(app.srcdir, twin[1] + suffix).is_file() for suffix in SOURCE_SUFFIXES)
        else:
            found = twin[1] in env.found_docs
        if not found:
            logger.warning("%s has no twin: add %s", docname, twin[1], location=docname)


SOURCE_SUFFIXES = (".ipynb", ".md")


def twin_href(app: Sphinx, pagename: str, twin_name: str) -> str:
    """The link from a page to its twin: within the book, or, when each language is its own
    edition (``bilingual_edition``), into the other edition's folder next to this one."""
    if not app.config.bilingual_edition:
        return app.builder.get_relative_uri(pagename, twin_name)
    other = twin_name.split("/")[1]
    to_edition_root = "../" * pagename.count("/")
    return f"{to_edition_root}../{other}/{app.builder.get_target_uri(twin_name)}"


def add_language(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    twin = twin_of(pagename)
    if twin is None or "body" not in context:
        return
    other, twin_name = twin
    context["language"] = page_language(pagename)
    href = escape(twin_href(app, pagename, twin_name))
    label = LANGUAGES[other]["switch"]
    context["body"] = (
        f'<p class="language-switch"><a href="{href}" hreflang="{other}" lang="{other}">'
        f"{label}</a></p>\n" + context["body"]
    )
    context["metatags"] = (
        context.get("metatags", "") + f'\n<link rel="alternate" hreflang="{other}" href="{href}" />'
    )


def theme_words(app: Sphinx) -> None:
    """The words of sphinx-book-theme's launch buttons that its own catalog lacks in the book's
    language: ``<locale_dirs>/<language>/LC_MESSAGES/booktheme.po``, compiled, then added behind
    the theme's catalog (its own translations come first). The words of its templates go through
    Sphinx's catalog (``sphinx.po``, compiled by Sphinx) and ``_templates/components``."""
    language = app.config.language
    for locale_dir in app.config.locale_dirs:
        base = Path(app.confdir, locale_dir)
        catalog = CatalogInfo(str(base / language / "LC_MESSAGES"), "booktheme", "utf-8")
        if Path(catalog.po_path).is_file():
            if catalog.is_outdated():
                catalog.write_mo(language)
            locale.init([str(base)], language, "booktheme")


def setup(app: Sphinx) -> dict:
    # "fr" or "en" when this build is one language's edition (scripts/editions.py), else None
    app.add_config_value("bilingual_edition", None, "env")
    app.connect("env-check-consistency", check_twins)
    # before the title collector (priority 500), so the sidebar shows the French titles too
    app.connect("doctree-read", french_pages, priority=400)
    app.connect("html-page-context", add_language)
    app.connect("builder-inited", theme_words)
    # env_version: a change to what this extension writes into doctrees re-reads every page
    return {"env_version": 5, "parallel_read_safe": True, "parallel_write_safe": True}
