"""Fixtures for the tests of the built website (run after `jupyter-book build`)."""

import functools
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "site-tests"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def book_pages() -> list[str]:
    """Every page of the built site (``make book``), as paths of HTML files relative to it: the
    root page that lets the reader choose, then each edition's pages under its language code
    (``fr/chapters/fr/what-is-it.html``), in the order of ``_toc.yml``."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return ["index.html"] + [f"{language_of(f)}/{f}.html" for f in files]


def language_of(path: str) -> str:
    """ "fr" for ``chapters/fr/...`` or ``fr/chapters/fr/...``."""
    return path.split("/")[path.split("/").index("chapters") + 1]


def source_of(page: str) -> str:
    """A built page's source, without suffix: ``fr/chapters/fr/x.html`` -> ``chapters/fr/x``."""
    return page.split("/", 1)[1].removesuffix(".html")


def twin_page(page: str) -> str:
    """The page in the other edition: ``fr/chapters/fr/x.html`` -> ``en/chapters/en/x.html``."""
    lang = language_of(page)
    other = "en" if lang == "fr" else "fr"
    return page.replace(f"{lang}/chapters/{lang}/", f"{other}/chapters/{other}/")


@pytest.fixture(scope="session")
def site() -> Path:
    if not (SITE / "index.html").is_file():
        pytest.fail(f"no built site in {SITE}: run `make book` first")
    return SITE


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output readable
        pass


@pytest.fixture(scope="session")
def server(site):
    """The built site served on 127.0.0.1 (a free port), for the session."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright (never `playwright install`)."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run installs it with `apt-get install chromium`")
        pytest.skip("Chromium is not installed (apt-get install chromium): browser tests skipped")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
