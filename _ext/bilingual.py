"""Bilingual pages: each chapter page declares its own language and links to its twin.

French chapters live under ``chapters/fr/`` and English ones under ``chapters/en/``, at the same
paths. On every chapter page this sets ``<html lang="...">``, adds a visible link to the twin page
and a ``<link rel="alternate" hreflang>`` for it, and warns (an error under ``-W``) when the twin
is missing. On French pages, numbers glued into the prose are written the French way: a decimal
comma and a narrow no-break space between thousands (Python's format specs know only one way).
"""

from __future__ import annotations

import re
from html import escape

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging

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


def french_glued_numbers(app: Sphinx, doctree: nodes.document) -> None:
    """Rewrite, on French pages, the text that ``{glue:text}`` pasted (its nodes carry the class
    ``pasted-text``), so that 0.81 reads 0,81 there."""
    if page_language(app.env.docname) != "fr":
        return
    for node in list(doctree.findall(nodes.inline)):
        if "pasted-text" in node["classes"]:
            text = node.astext()
            if french_number(text) != text:
                node.clear()
                node += nodes.Text(french_number(text))


def check_twins(app: Sphinx, env) -> None:
    for docname in sorted(env.found_docs):
        twin = twin_of(docname)
        if twin and twin[1] not in env.found_docs:
            logger.warning("%s has no twin: add %s", docname, twin[1], location=docname)


def add_language(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    twin = twin_of(pagename)
    if twin is None or "body" not in context:
        return
    other, twin_name = twin
    context["language"] = page_language(pagename)
    href = escape(app.builder.get_relative_uri(pagename, twin_name))
    label = LANGUAGES[other]["switch"]
    context["body"] = (
        f'<p class="language-switch"><a href="{href}" hreflang="{other}" lang="{other}">'
        f"{label}</a></p>\n" + context["body"]
    )
    context["metatags"] = (
        context.get("metatags", "") + f'\n<link rel="alternate" hreflang="{other}" href="{href}" />'
    )


def setup(app: Sphinx) -> dict:
    app.connect("env-check-consistency", check_twins)
    app.connect("doctree-read", french_glued_numbers)
    app.connect("html-page-context", add_language)
    # env_version: a change to what this extension writes into doctrees re-reads every page
    return {"env_version": 2, "parallel_read_safe": True, "parallel_write_safe": True}
