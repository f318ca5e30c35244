"""Every page of the built site in a real browser (Debian's Chromium through Playwright)."""

from urllib.parse import urlparse

import pytest

from conftest import book_pages, language_of, twin_page

PAGES = book_pages()
# one screenshot per kind of page
SCREENSHOT_OF = {
    "index.html": "landing",
    "fr/chapters/fr/what-is-it.html": "chapter-fr",
    "en/chapters/en/how-it-works.html": "chapter-en-math",
    "en/chapters/en/references.html": "references",
}


def open_page(browser, url):
    """A page loaded with every console error and every request leaving 127.0.0.1 recorded."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = {"console": [], "outside": []}
    page.on("console", lambda m: problems["console"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems["console"].append(str(error)))

    def only_local(route):
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            problems["outside"].append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    response = page.goto(url, wait_until="networkidle")
    return page, response, problems


@pytest.mark.parametrize("path", PAGES)
def test_page_loads_offline_with_math_and_images(browser, server, screenshots, path):
    page, response, problems = open_page(browser, f"{server}/{path}")
    assert response.status == 200
    if page.locator(".math").count():
        page.wait_for_function(
            "[...document.querySelectorAll('.math')].every(m => m.querySelector('mjx-container'))",
            timeout=15000,
        )
    text = page.locator("main").inner_text()
    assert "$$" not in text and "\\(" not in text and "\\[" not in text
    broken = page.evaluate(
        "[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    assert broken == []
    assert problems == {"console": [], "outside": []}
    if path in SCREENSHOT_OF:
        page.screenshot(path=screenshots / f"{SCREENSHOT_OF[path]}.png", full_page=False)
    page.close()


@pytest.mark.parametrize("path", [p for p in PAGES if "/chapters/" in p])
def test_language_switch_reaches_the_twin(browser, server, path):
    lang = language_of(path)
    other = "en" if lang == "fr" else "fr"
    page, _, problems = open_page(browser, f"{server}/{path}")
    assert page.get_attribute("html", "lang") == lang
    page.click("p.language-switch a")
    page.wait_for_load_state("networkidle")
    assert page.url == f"{server}/{twin_page(path)}"
    assert page.get_attribute("html", "lang") == other
    assert problems == {"console": [], "outside": []}
    page.close()


@pytest.mark.parametrize(("lang", "query"), [("en", "batch"), ("fr", "lots")])
def test_each_edition_searches_its_own_pages(browser, server, screenshots, lang, query):
    page, _, problems = open_page(browser, f"{server}/{lang}/search.html?q={query}")
    page.wait_for_selector("#search-results ul.search li", timeout=15000)
    results = page.locator("#search-results ul.search li a")
    assert results.count() > 0
    hrefs = [results.nth(i).get_attribute("href") for i in range(results.count())]
    assert all(f"chapters/{lang}/" in href for href in hrefs), hrefs
    if lang == "fr":
        page.screenshot(path=screenshots / "search.png")
    assert problems == {"console": [], "outside": []}
    page.close()
