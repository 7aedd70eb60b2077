"""The outcome of a run: each figure's numbers and claims, written as metrics.json and report.md.

Every figure module returns a `FigureResult`; `write_report` turns the results of one run into
    metrics.json  every number: settings, summary metrics, the curves behind each plot, the claims;
    report.md     the settings (next to the paper's), the measured numbers, and for each of the
                  paper's claims whether this run bears it out, with the figures embedded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .settings import as_dict, differences


@dataclass
class Claim:
    """One statement of the paper and what this run says about it.

    text: the paper's claim. evidence: this run's numbers that bear on it, in words.
    holds: True / False, or None where this run cannot test it (say why in `evidence`).
    """

    text: str
    evidence: str
    holds: bool | None


@dataclass
class FigureResult:
    """What one figure produced. `metrics` holds the summary numbers (nested dicts of floats),
    `curves` the arrays drawn in the plot; `files` are the written PNG/PDF names, relative to the
    output folder; `notes` are plain sentences for the report (e.g. that the data are not MNIST)."""

    key: str
    title: str
    settings: Any
    metrics: dict[str, Any]
    curves: dict[str, Any]
    claims: list[Claim]
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------------- JSON
def jsonable(value: Any, digits: int = 7) -> Any:
    """Arrays, tensors and NumPy scalars as JSON values; floats to `digits` significant digits;
    NaN and infinities as null (JSON has no such numbers)."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [jsonable(v, digits) for v in value.tolist()] if value.ndim else jsonable(value.item(), digits)
    if isinstance(value, dict):
        return {str(k): jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, digits) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return float(f"{number:.{digits}g}") if math.isfinite(number) else None
    return value


def dumps(value: Any, indent: int = 0) -> str:
    """JSON with one key per line, but each list of plain numbers on a single line (curves stay readable)."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + dumps(v, indent + 1) for v in value) + f"\n{pad}]"
    return json.dumps(value)


def figure_record(result: FigureResult) -> dict[str, Any]:
    """One figure's entry in metrics.json."""
    return {
        "title": result.title,
        "seconds": result.seconds,
        "settings": as_dict(result.settings),
        "differences_from_paper": {k: {"this_run": v[0], "paper": v[1]} for k, v in
                                   differences(result.settings).items()},
        "metrics": result.metrics,
        "claims": [{"claim": c.text, "evidence": c.evidence, "holds": c.holds} for c in result.claims],
        "files": result.files,
        "notes": result.notes,
        "curves": result.curves,
    }


# ----------------------------------------------------------------------------- markdown
def _number(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}" if math.isfinite(float(value)) else str(float(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(_number(v) for v in value)
    return str(value)


def _flatten(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, name + " / ")
        else:
            rows.append((name, value))
    return rows


def _verdict(holds: bool | None) -> str:
    return {True: "**yes**", False: "**no**", None: "not tested"}[holds]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def figure_markdown(result: FigureResult) -> str:
    """The report's section for one figure."""
    lines = [f"## {result.title}", ""]
    for name in result.files:
        if name.endswith(".png"):
            lines += [f"![{result.title}]({name})", ""]
    others = [name for name in result.files if not name.endswith(".png")]
    if others:
        lines += ["Also: " + ", ".join(f"[{name}]({name})" for name in others) + ".", ""]
    for note in result.notes:
        lines += [f"> **Note.** {note}", ""]
    settings, diffs = as_dict(result.settings), differences(result.settings)
    lines += ["**Settings** (this run; the paper's value where it differs):", ""]
    lines += ["| setting | this run | paper |", "|---|---|---|"]
    for key, value in settings.items():
        paper = _number(diffs[key][1]) if key in diffs else "same"
        lines.append(f"| {key} | {_number(value)} | {paper} |")
    lines += ["", f"**Measured** (in {result.seconds:.1f} s):", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {_cell(name)} | {_number(value)} |" for name, value in _flatten(result.metrics)]
    lines += ["", "**The paper's claims:**", "", "| the paper says | this run | borne out |", "|---|---|---|"]
    lines += [f"| {_cell(c.text)} | {_cell(c.evidence)} | {_verdict(c.holds)} |" for c in result.claims]
    return "\n".join(lines) + "\n"


def report_markdown(results: list[FigureResult], run_info: dict[str, Any]) -> str:
    """The whole report.md of a run."""
    lines = ["# Reproducing Jacot, Gabriel and Hongler (2018), Section 6", ""]
    lines += [f"- **{key}**: {_number(value)}" for key, value in run_info.items()]
    lines += ["", "## Summary", "", "| figure | the paper says | borne out |", "|---|---|---|"]
    for result in results:
        for claim in result.claims:
            lines.append(f"| {result.key} | {_cell(claim.text)} | {_verdict(claim.holds)} |")
    lines.append("")
    return "\n".join(lines) + "\n" + "\n".join(figure_markdown(r) for r in results)


def write_report(out_dir: str | Path, results: list[FigureResult],
                 run_info: dict[str, Any]) -> tuple[Path, Path]:
    """Write report.md and metrics.json for the figures of one run into `out_dir`; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"run": jsonable(run_info), **{r.key: jsonable(figure_record(r)) for r in results}}
    metrics_path, report_path = out / "metrics.json", out / "report.md"
    metrics_path.write_text(dumps(metrics) + "\n")
    report_path.write_text(report_markdown(results, run_info))
    return report_path, metrics_path


__all__ = ["Claim", "FigureResult", "dumps", "figure_markdown", "jsonable", "report_markdown", "write_report"]
