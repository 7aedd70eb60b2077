"""Every internal link of the built documentation leads somewhere: each relative href/src of every page
names a file of the site, and each #fragment an id on the target page. (External links are not
followed: there is no network at test time.) Skips when the site is not built."""

from __future__ import annotations

import functools
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

SITE = Path(__file__).resolve().parents[1] / "docs" / "_build" / "html"
SKIP_DIRS = {"_static", "_downloads", "_sources", "_images", "plot_directive"}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("id", "name"):
            if values.get(name):
                self.ids.add(values[name])
        for attribute in ("href", "src"):
            if values.get(attribute) and tag in ("a", "img", "link", "script", "iframe", "source"):
                self.links.append(values[attribute])


@functools.cache
def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def pages() -> list[Path]:
    return [p for p in SITE.rglob("*.html") if not SKIP_DIRS.intersection(p.relative_to(SITE).parts)]


def broken_links(page: Path) -> list[str]:
    broken = []
    for link in parse(page).links:
        parts = urlsplit(link)
        if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:", "data:")):
            continue                                   # external: not followed
        target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            broken.append(f"{link} (no such file)")
            continue
        fragment = unquote(parts.fragment)
        if fragment and target.suffix == ".html" and fragment not in parse(target).ids:
            broken.append(f"{link} (no id {fragment!r} there)")
    return broken


def test_internal_links() -> None:
    if not (SITE / "index.html").exists():
        pytest.skip("the documentation is not built (python -m sphinx -W -b html docs docs/_build/html)")
    found = pages()
    assert len(found) >= 20, f"only {len(found)} pages in the built site"
    problems = {str(p.relative_to(SITE)): broken_links(p) for p in found}
    problems = {page: links for page, links in problems.items() if links}
    assert not problems, f"broken internal links: {problems}"


def test_checker_finds_a_broken_link(tmp_path: Path) -> None:
    """The checker itself: a missing page and a missing fragment are both reported, good links are not."""
    (tmp_path / "a.html").write_text('<a href="b.html#here">ok</a><a href="c.html">no page</a>'
                                     '<a href="b.html#gone">no id</a><a href="https://example.org/x">ext</a>')
    (tmp_path / "b.html").write_text('<h2 id="here">B</h2>')
    parse.cache_clear()
    broken = broken_links(tmp_path / "a.html")
    assert len(broken) == 2 and "c.html" in broken[0] and "gone" in broken[1]


def test_performance_page_has_the_benchmark_tables() -> None:
    """One table per benchmarks/results/*.json, each with a row per result (read when the site was built)."""
    page = SITE / "performance.html"
    if not page.exists():
        pytest.skip("the documentation is not built (python -m sphinx -W -b html docs docs/_build/html)")
    html = page.read_text(encoding="utf-8")
    results = sorted((SITE.parents[2] / "benchmarks" / "results").glob("*.json"))
    assert len(results) > 0 and html.count("ntkit-benchmark") == len(results), "one table per results file"
    for path in results:
        assert f'id="results-{path.stem.replace("_", "-")}"' in html, f"no section for {path.name}"
    assert html.count("Measured on:") + html.count("does not name its machine") == len(results)


def test_api_reference_has_every_cli_command() -> None:
    """The API page shows the help of `ntkit` and of each of its subcommands, as the parser defines them."""
    page = SITE / "api" / "index.html"
    if not page.exists():
        pytest.skip("the documentation is not built (python -m sphinx -W -b html docs docs/_build/html)")
    import argparse

    from ntkit.cli import build_parser

    html = page.read_text(encoding="utf-8")
    parser = build_parser()
    subcommands = [name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                   for name in action.choices]
    assert subcommands
    for name in ["", *subcommands]:
        anchor = f'id="ntkit-{name + "-" if name else ""}help"'
        assert anchor in html, f"no help section for 'ntkit {name} --help'"
