"""The built documentation, opened in a real headless browser (Debian's chromium, driven by Playwright).

Checks the site as a reader sees it: the home page, a gallery page and an API page render with their
navigation; math is typeset by MathJax (its output elements are there and no raw TeX delimiters are
left in the visible text); every image of the gallery page and the getting-started figure has loaded
(naturalWidth > 0); the search page finds `empirical_ntk`; and no page asks for anything outside the
site (no CDN: the site works offline) or gets an HTTP error. Screenshots go to docs/_build/screenshots/.

Skips, saying why, when the site is not built (build it with the README's docs command), when
Playwright is not installed (`pip install -e ".[docs]"`) or when no chromium is found
(`apt-get install -y chromium`, or NTKIT_CHROMIUM=/path/to/chrome).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "docs" / "_build" / "html"
SHOTS = ROOT / "docs" / "_build" / "screenshots"
GALLERY_PAGE = "auto_examples/plot_figure1_ntk_convergence.html"
API_PAGE = "api/generated/ntkit.empirical_ntk.html"


def chromium_path() -> str | None:
    for candidate in (os.environ.get("NTKIT_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def site_url() -> Iterator[str]:
    if not (SITE / "index.html").exists():
        pytest.skip("the documentation is not built (python -m sphinx -W -b html docs docs/_build/html)")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)   # loopback only
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (the docs extra)")
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium browser found (Debian: apt-get install -y chromium; or set NTKIT_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


class Visit:
    """A page opened at `url`, with every request outside the site and every HTTP error recorded."""

    def __init__(self, browser: object, base: str, path: str):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: None if r.url.startswith((base, "data:", "blob:", "about:"))
                     else self.outside.append(r.url))
        self.page.on("response", lambda r: self.errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        self.page.goto(base + path, wait_until="load")

    def typeset(self) -> None:
        """Wait until MathJax has typeset the page (its startup promise)."""
        self.page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                    timeout=30_000)
        self.page.evaluate("() => MathJax.startup.promise")

    def check_clean(self) -> None:
        assert not self.outside, f"the page asked for resources outside the site: {self.outside[:5]}"
        assert not self.errors, f"HTTP errors: {self.errors[:5]}"

    def screenshot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)

    def navigation_links(self) -> list[str]:
        """The texts of the links in the site's top navigation bar."""
        return self.page.eval_on_selector_all(".bd-header a.nav-link", "els => els.map(e => e.textContent.trim())")

    def check_math(self, minimum: int) -> None:
        self.typeset()
        rendered = self.page.locator("mjx-container").count()
        assert rendered >= minimum, f"{rendered} typeset formulas, expected at least {minimum}"
        text = self.page.evaluate(  # the visible prose: code blocks may show TeX on purpose (plot labels)
            """() => { const a = document.querySelector('article').cloneNode(true);
                       a.querySelectorAll('pre, code, .highlight').forEach(e => e.remove());
                       document.body.appendChild(a); const t = a.innerText; a.remove(); return t; }""")
        for raw in ("\\(", "\\)", "\\[", "\\]", "$$"):
            assert raw not in text, f"raw TeX {raw!r} is visible: MathJax did not typeset the page"
        assert "\\Theta" not in text, "raw TeX \\Theta is visible"

    def check_images(self, minimum: int) -> None:
        self.page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=30_000)
        images = self.page.eval_on_selector_all(
            "article img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth])")
        assert len(images) >= minimum, f"{len(images)} images, expected at least {minimum}"
        broken = [src for src, width in images if not width]
        assert not broken, f"images that did not load: {broken}"


def test_home_page(browser: object, site_url: str) -> None:
    visit = Visit(browser, site_url, "index.html")
    assert "ntkit" in visit.page.title()
    links = visit.navigation_links()
    for wanted in ("Getting started", "The paper", "Gallery", "API"):
        assert wanted in links, f"{wanted!r} missing from the navigation bar {links}"
    visit.screenshot("home")
    visit.check_clean()


def test_getting_started_figure_and_math(browser: object, site_url: str) -> None:
    visit = Visit(browser, site_url, "getting-started.html")
    visit.check_math(minimum=3)
    visit.check_images(minimum=1)
    visit.screenshot("getting-started")
    visit.check_clean()


def test_paper_page_math(browser: object, site_url: str) -> None:
    visit = Visit(browser, site_url, "paper.html")
    visit.check_math(minimum=30)
    displayed = visit.page.locator("mjx-container[display='true']").count()
    assert displayed >= 6, f"{displayed} displayed equations"
    visit.screenshot("paper")
    visit.check_clean()


def test_gallery_page(browser: object, site_url: str) -> None:
    visit = Visit(browser, site_url, GALLERY_PAGE)
    assert visit.page.locator("h1").first.inner_text().startswith("Figure 1")
    sidebar = visit.page.eval_on_selector_all(".bd-sidebar-primary a", "els => els.map(e => e.textContent)")
    assert len(sidebar) >= 5, f"the gallery page has no sidebar navigation: {sidebar}"
    assert "Gallery" in visit.navigation_links()
    visit.check_images(minimum=1)
    visit.check_math(minimum=3)
    visit.screenshot("gallery-figure1")
    visit.check_clean()


def test_api_page(browser: object, site_url: str) -> None:
    visit = Visit(browser, site_url, API_PAGE)
    entry = visit.page.locator("dt[id='ntkit.empirical_ntk']")
    assert entry.count() == 1, "no API entry for ntkit.empirical_ntk"
    assert "empirical_ntk" in entry.inner_text()
    body = visit.page.inner_text("article")
    assert "mode" in body and "Returns" in body, "the docstring's arguments did not render"
    assert "API" in visit.navigation_links()
    visit.screenshot("api-empirical_ntk")
    visit.check_clean()


def test_search_finds_empirical_ntk(browser: object, site_url: str) -> None:
    visit = Visit(browser, site_url, "search.html?q=empirical_ntk")
    visit.page.wait_for_selector("#search-results ul.search li", timeout=30_000)
    hits = visit.page.eval_on_selector_all("#search-results ul.search li a",
                                           "els => els.map(e => e.getAttribute('href'))")
    assert any("ntkit.empirical_ntk" in (href or "") for href in hits), f"search results: {hits[:10]}"
    visit.screenshot("search")
    visit.check_clean()
