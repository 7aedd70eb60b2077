"""The code on the documentation's prose pages runs, top to bottom, one namespace per page.

Every ```python block and every plot directive of docs/*.md is executed in order (so the numbers,
asserts and API calls the pages show stay true); ```bash and other blocks are not run. Figures are
drawn with the Agg backend and closed.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)
PAGES = sorted(DOCS.glob("*.md"))
pytestmark = pytest.mark.usefixtures("one_thread")   # small examples: one thread is as fast, and far faster under load


def code_blocks(text: str) -> list[str]:
    """The executable blocks of a MyST page: ```python, and the code of a ``.. plot::`` directive in an
    ```{eval-rst} block (without its :option: lines)."""
    blocks = []
    for language, body in FENCE.findall(text):
        if language == "python":
            blocks.append(body)
        elif language == "{eval-rst}" and body.lstrip().startswith(".. plot::"):
            lines = body.lstrip().splitlines()[1:]
            code = [line for line in lines if not line.strip().startswith(":")]
            blocks.append(textwrap.dedent("\n".join(code)))
    return blocks


def test_pages_have_code() -> None:
    """The extraction finds the pages and their blocks (a page format change must not silently run nothing)."""
    counted = {page.name: len(code_blocks(page.read_text())) for page in PAGES}
    assert counted.get("getting-started.md", 0) >= 2 and counted.get("paper.md", 0) >= 8, counted


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_code_runs(page: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = page.read_text()
    if "sklearn" in text:
        pytest.importorskip("sklearn")
    if "botorch" in text:
        pytest.importorskip("botorch", reason="the gpytorch extra is not installed")
    if "dask" in text:
        pytest.importorskip("distributed", reason="the dask extra is not installed")
        pytest.importorskip("zarr", reason="the dask extra is not installed")
    monkeypatch.chdir(DOCS)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)     # a page's example must not warn (nor its readers)
            for index, block in enumerate(code_blocks(text)):
                code = compile(block, f"{page.name} block {index + 1}", "exec")
                exec(code, namespace)  # noqa: S102 - the documentation's own code
    finally:
        plt.close("all")
