"""Sphinx extensions for the ntkit documentation, each read from the project at build time so the pages
cannot drift from it:

- ``.. ntkit-cli::`` the ``--help`` text of the ``ntkit`` command and of each subcommand, from the
  command's own argparse parser;
- ``.. ntkit-benchmarks::`` one table per ``benchmarks/results/*.json`` file, with the machine the
  numbers were measured on;
- a check that every public name (``ntkit.__all__``, ``ntkit.sklearn.__all__``) has an API entry:
  a missing one is a warning, so an error in the CI build (``-W``).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import math
import os
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
PUBLIC_MODULES = ("ntkit", "ntkit.sklearn")


# ---------------------------------------------------------------------------------------- CLI help
def _help_text(parser: argparse.ArgumentParser) -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"               # argparse wraps to the terminal width: fix it
    try:
        return parser.format_help()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def cli_sections() -> list[tuple[str, str]]:
    """[(command line, its --help text)] for ``ntkit`` and each of its subcommands."""
    from ntkit.cli import build_parser

    parser = build_parser()
    sections = [("ntkit --help", _help_text(parser))]
    for action in parser._actions:              # argparse keeps subcommands in a private action
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                sections.append((f"ntkit {name} --help", _help_text(sub)))
    return sections


class CLIHelp(SphinxDirective):
    """The help of the ``ntkit`` command and its subcommands, one titled block each."""

    def run(self) -> list[nodes.Node]:
        out: list[nodes.Node] = []
        for command, text in cli_sections():
            section = nodes.section(ids=[nodes.make_id(command)], names=[nodes.fully_normalize_name(command)])
            section += nodes.title("", "", nodes.literal(command, command))
            section += nodes.literal_block(text, text, language="text")
            self.state.document.note_implicit_target(section, section)
            out.append(section)
        return out


# ------------------------------------------------------------------------------- benchmark tables
def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return f"{value:.2e}"
    return str(value)


def _cell(value: Any) -> str:
    return _format(value).replace("|", "/").replace("\n", " ") or " "


def machine_of(data: dict[str, Any]) -> str:
    """A sentence naming the machine a results file was measured on (from whichever fields it has)."""
    parts: list[str] = []
    for key in ("machine", "meta"):
        value = data.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, dict):
            wanted = ("machine", "platform", "processor", "cpus", "machine_cpus", "threads", "torch_threads",
                      "torch", "device", "gpu", "date")
            parts += [f"{k} {_format(value[k])}" for k in wanted if k in value and value[k] not in ("", None)]
    if "machine_cpus" in data:
        parts.append(f"cpus {data['machine_cpus']}")
    if not parts:
        return "The results file does not name its machine."
    return "Measured on: " + "; ".join(dict.fromkeys(parts)) + "."


CONTEXT = ("machine", "meta", "versions", "settings")  # described around the table, not rows of it


def rows_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a results file: its "rows" or "results" list; or, keyed by name, the entries of a "results"
    dict or the top-level dicts (one row each, "name" first); or else one row of its top-level values."""
    def named(items: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"name": name, **value} if isinstance(value, dict) else {"name": name, "value": value}
                for name, value in items.items()]

    for key in ("rows", "results"):
        if isinstance(data.get(key), list):
            return [row for row in data[key] if isinstance(row, dict)]
        if isinstance(data.get(key), dict) and data[key]:
            return named(data[key])
    nested = {key: value for key, value in data.items() if isinstance(value, dict) and key not in CONTEXT}
    if nested:
        return named(nested)
    scalars = {key: value for key, value in data.items() if not isinstance(value, (list, dict))}
    return [scalars] if scalars else []


def table_columns(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(columns whose value is the same in every row, the other columns); scalar columns only."""
    columns: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key not in columns and not isinstance(value, (list, dict)):
                columns.append(key)
    columns = [c for c in columns if any(row.get(c) is not None for row in rows)]
    shared = [c for c in columns if len(rows) > 1 and len({json.dumps(row.get(c)) for row in rows}) == 1]
    return shared, [c for c in columns if c not in shared] or columns


def _paragraph(*parts: str | nodes.Node) -> nodes.paragraph:
    para = nodes.paragraph()
    for part in parts:
        para += nodes.Text(part) if isinstance(part, str) else part
    return para


def _table(header: list[str], body: list[list[str]]) -> nodes.table:
    """A docutils table (built as nodes, so it renders the same from Markdown and reStructuredText pages)."""
    table = nodes.table(classes=["ntkit-benchmark"])
    group = nodes.tgroup(cols=len(header))
    table += group
    group += [nodes.colspec(colwidth=1) for _ in header]

    def row(cells: list[str], literal: bool) -> nodes.row:
        out = nodes.row()
        for cell in cells:
            out += nodes.entry("", _paragraph(nodes.literal(cell, cell) if literal else cell))
        return out

    group += nodes.thead("", row(header, True))
    group += nodes.tbody("", *[row(cells, False) for cells in body])
    return table


class Benchmarks(SphinxDirective):
    """A section per ``benchmarks/results/*.json``: the machine, the shared settings and a table."""

    def run(self) -> list[nodes.Node]:
        files = sorted(RESULTS.glob("*.json"))
        if not files:
            logger.warning("no benchmark results found in benchmarks/results", location=self.get_location())
        out: list[nodes.Node] = []
        for path in files:
            self.env.note_dependency(str(path))
            data = json.loads(path.read_text())
            section = nodes.section(ids=[nodes.make_id(f"results-{path.stem}")], names=[f"results {path.stem}"])
            section += nodes.title("", "", nodes.literal(path.name, path.name))
            section += _paragraph(machine_of(data))
            if data.get("command"):
                section += _paragraph("Command: ", nodes.literal(data["command"], data["command"]))
            rows = rows_of(data)
            if not rows:
                section += _paragraph("(no rows in this file)")
            else:
                shared, varying = table_columns(rows)
                if shared:
                    para = _paragraph("Every row: ")
                    for i, column in enumerate(shared):
                        para += [nodes.literal(column, column), nodes.Text(f" = {_cell(rows[0].get(column))}")]
                        para += nodes.Text("; " if i < len(shared) - 1 else ".")
                    section += para
                section += _table(varying, [[_cell(row.get(c, "")) for c in varying] for row in rows])
            self.state.document.note_implicit_target(section, section)
            out.append(section)
        return out


def _inline(text: str) -> nodes.paragraph:
    """A paragraph of plain text whose `backticked` parts are code."""
    para = nodes.paragraph()
    for index, part in enumerate(text.split("`")):
        if part:
            para += nodes.literal(part, part) if index % 2 else nodes.Text(part)
    return para


class BenchmarkScripts(SphinxDirective):
    """A table of ``benchmarks/*.py``: each script with the first paragraph of its docstring."""

    def run(self) -> list[nodes.Node]:
        table = nodes.table()
        group = nodes.tgroup(cols=2)
        table += group
        group += [nodes.colspec(colwidth=1), nodes.colspec(colwidth=4)]
        head = nodes.row("", nodes.entry("", _paragraph("script")),
                         nodes.entry("", _paragraph("what it measures, and against what")))
        group += nodes.thead("", head)
        body = nodes.tbody()
        for path in sorted(RESULTS.parent.glob("*.py")):
            self.env.note_dependency(str(path))
            doc = ast.get_docstring(ast.parse(path.read_text())) or "(no description)"
            first = " ".join(doc.split("\n\n")[0].split())
            body += nodes.row("", nodes.entry("", _paragraph(nodes.literal(path.name, path.name))),
                              nodes.entry("", _inline(first)))
        group += body
        return [table]


# ------------------------------------------------------------------------------- API coverage
def public_names() -> list[str]:
    names = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        names += [f"{module_name}.{name}" for name in module.__all__]
    return names


def check_api_coverage(app: Sphinx, env: Any) -> None:
    documented = set(env.get_domain("py").objects)
    missing = [name for name in public_names() if name not in documented]
    if missing:
        logger.warning("public names without an entry in the API reference (add them to docs/api/index.rst): "
                       + ", ".join(missing))


def resolve_reexported(app: Sphinx, env: Any, node: Any, contnode: nodes.Node) -> nodes.Node | None:
    """A type hint names a class by its defining module (ntkit.layers.sequential.Sequential); the reference
    documents it where users import it (ntkit.Sequential). Link to that entry when it is the same object."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("ntkit.") or target.count(".") < 2:
        return None
    module_name, _, name = target.rpartition(".")
    try:
        wanted = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None
    domain = env.get_domain("py")
    for public in PUBLIC_MODULES + ("ntkit.gram", "ntkit.solvers", "ntkit.activations", "ntkit.layers"):
        candidate = f"{public}.{name}"
        if candidate in domain.objects and getattr(importlib.import_module(public), name, None) is wanted:
            return domain.resolve_xref(env, node.get("refdoc"), app.builder, "class", candidate, node, contnode)
    return None


def skip_member(app: Sphinx, what: str, name: str, obj: Any, skip: bool, options: Any) -> bool | None:
    """Leave out what scikit-learn adds to every estimator (metadata-routing request setters)."""
    if name.startswith("set_") and name.endswith("_request") or name == "get_metadata_routing":
        return True
    return None


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-skip-member", skip_member)
    app.connect("missing-reference", resolve_reexported)
    app.add_directive("ntkit-cli", CLIHelp)
    app.add_directive("ntkit-benchmarks", Benchmarks)
    app.add_directive("ntkit-benchmark-scripts", BenchmarkScripts)
    app.connect("env-check-consistency", check_api_coverage)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
