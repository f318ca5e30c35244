"""Keep every page offline and free of console errors.

- Thebe (live code through Binder) is not offered: chapters launch in Colab. Jupyter Book still
  adds sphinx-thebe's scripts, which name a CDN and, here, declare ``THEBE_JS_URL`` twice (a
  JavaScript error on every page). They are dropped.
- The theme starts a first-time visitor in an empty colour mode and reports it as an error;
  the template's ``default_mode`` is set to ``auto`` (follow the system's light or dark setting).
"""

from __future__ import annotations

from sphinx.application import Sphinx


def _is_thebe(script) -> bool:
    filename = str(getattr(script, "filename", script) or "")
    body = str(getattr(script, "attributes", {}).get("body", ""))
    return "thebe" in filename or "THEBE_JS_URL" in body


def clean_page(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    if "script_files" in context:
        context["script_files"] = [s for s in context["script_files"] if not _is_thebe(s)]
    context.setdefault("default_mode", "auto")


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", clean_page)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
