"""`reproduce`: run the paper's figures, save their plots, and write one report for the run."""

from __future__ import annotations

import datetime
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .common import Context, resolve_device
from .report import FigureResult, write_report
from .settings import differences, get_settings, key_of

FIGURES = ("fig1", "fig2", "fig3")


def _module(key: str) -> Any:
    from . import fig1, fig2, fig3

    return {"fig1": fig1, "fig2": fig2, "fig3": fig3}[key]


def reproduce(figures: str | Iterable[str] = FIGURES, out_dir: str | Path = "ntkit-reproduce", *,
              full: bool = False, device: str | None = "auto", seed: int = 0, data_dir: str | None = None,
              download: bool = True, progress: bool | None = None, settings: dict[str, Any] | None = None,
              command: str | None = None, log: Callable[[str], None] | None = print) -> list[FigureResult]:
    """Run Figures 1-3 of the paper (or some of them) and write plots, metrics.json and report.md.

    figures: "fig1", "fig2", "fig3", "all", or several of them.
    full: the paper's sizes (meant for a GPU); otherwise the default CPU-sized run (`settings.DEFAULT`).
    settings: {figure: settings object} replacing the chosen sizes for those figures.
    log: where one-line progress messages go (None: nowhere).
    The report is rewritten after each figure, so a long run that stops early keeps what it made.
    Returns the figures' results.
    """
    keys = _figure_keys(figures)
    overrides = dict(settings or {})
    for key, value in overrides.items():
        if key not in FIGURES or key_of(value) != key:
            raise ValueError(f"settings[{key!r}] must be the settings of {key}, got {type(value).__name__}")
    context = Context(device=resolve_device(device), seed=int(seed), progress=progress,
                      data_dir=None if data_dir is None else str(data_dir), download=bool(download))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda message: None)
    started, results = time.perf_counter(), []
    for key in keys:
        chosen = overrides.get(key, get_settings(key, full))
        say(f"{key}: running ({_sizes(chosen, full, key in overrides)}) on {context.device}")
        begin = time.perf_counter()
        result = _module(key).run(chosen, out, context)
        result.seconds = time.perf_counter() - begin
        results.append(result)
        for note in result.notes:
            say(f"{key}: NOTE: {note}")
        verdicts = [c.holds for c in result.claims]
        say(f"{key}: done in {result.seconds:.1f} s; {sum(v is True for v in verdicts)} of {len(verdicts)} "
            f"claims borne out; wrote {', '.join(result.files)}")
        info = run_info(context, full, bool(overrides), command, time.perf_counter() - started)
        report, _ = write_report(out, results, info)
    say(f"report: {report}")
    return results


def _figure_keys(figures: str | Iterable[str]) -> list[str]:
    names = [figures] if isinstance(figures, str) else list(figures)
    keys: list[str] = []
    for name in names:
        if name == "all":
            keys += [k for k in FIGURES if k not in keys]
        elif name in FIGURES:
            keys += [] if name in keys else [name]
        else:
            raise ValueError(f"figures must be among {', '.join(FIGURES)} or 'all', got {name!r}")
    if not keys:
        raise ValueError("figures must name at least one figure")
    return keys


def _sizes(settings: Any, full: bool, overridden: bool) -> str:
    if overridden:
        return "custom sizes"
    if full:
        return "the paper's sizes"
    changed = differences(settings)
    return "default sizes" + (f": {', '.join(f'{k}={v[0]}' for k, v in changed.items())}" if changed else "")


def run_info(context: Context, full: bool, custom: bool, command: str | None,
             seconds: float) -> dict[str, Any]:
    """The run's header in report.md and metrics.json."""
    from .. import __version__

    device = context.device
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(torch.device(device))})"
    else:
        device += f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    sizes = "the paper's (--full)" if full else \
        "default (reduced for a CPU; differences listed under each figure)"
    return {
        "command": command or "ntkit.experiments.reproduce(...) from Python",
        "sizes": sizes + (", with custom overrides" if custom else ""),
        "device": device,
        "seed": context.seed,
        "versions": f"ntkit {__version__}, torch {torch.__version__}, Python {platform.python_version()}",
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "wall time (s)": round(seconds, 1),
    }


__all__ = ["FIGURES", "reproduce", "run_info"]
