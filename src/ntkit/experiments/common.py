"""What the three figure modules share: the run's context, seeds, and saving plots.

matplotlib is used through its object API (`matplotlib.figure.Figure`), never pyplot, so making
the figures changes no global state of a user's session and needs no display.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Context:
    """The run-wide choices every figure takes.

    device: where the finite networks are trained ("cpu", "cuda", "cuda:1", ...).
    seed: the run's seed; every network and data draw derives its own from it (`derive_seed`).
    progress: progress bars on (True), off (False), or the global setting (None).
    data_dir, download: where to look for MNIST and whether it may be downloaded (Figure 3).
    """

    device: str = "cpu"
    seed: int = 0
    progress: bool | None = None
    data_dir: str | None = None
    download: bool = True


def resolve_device(device: str | None) -> str:
    """"auto" (or None) -> "cuda" when available, else "cpu"; a CUDA device that is absent is an error."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available here; use --device cpu")
    return device


def derive_seed(seed: int, *keys: int) -> int:
    """A reproducible 63-bit seed for one network or data stream, from the run's seed and its indices."""
    state = np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def new_figure(ncols: int = 1, *, width: float = 6.4, height: float = 4.4) -> tuple[Any, list[Any]]:
    """A matplotlib Figure with `ncols` side-by-side axes (object API; no pyplot)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the figures need matplotlib (a dependency of ntkit): pip install matplotlib") from exc
    figure = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, list(axes)


def save_figure(figure: Any, out_dir: str | Path, stem: str) -> list[str]:
    """Save `figure` as <stem>.png (150 dpi) and <stem>.pdf in `out_dir`; return the file names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"{stem}.png", f"{stem}.pdf"]
    figure.savefig(out / names[0], dpi=150)
    figure.savefig(out / names[1])
    return names


def width_colors(widths: tuple[int, ...]) -> dict[int, str]:
    """One colour per width, from narrow (orange/red) to wide (blue/green), as in the paper's plots."""
    palette = ["tab:orange", "tab:green", "tab:purple", "tab:red", "tab:brown", "tab:pink"]
    return {width: palette[i % len(palette)] for i, width in enumerate(widths)}


def fmt(value: float) -> str:
    """A number for a sentence of the report: 4 significant digits."""
    return f"{float(value):.4g}"


def listing(widths: list[int] | tuple[int, ...], values: list[float], unit: str = "") -> str:
    """"0.1 (n=100), 0.03 (n=1000)": one value per width, for the report's sentences."""
    return ", ".join(f"{fmt(v)}{unit} (n={w})" for w, v in zip(widths, values, strict=True))


__all__ = ["Context", "derive_seed", "fmt", "listing", "new_figure", "resolve_device", "save_figure",
           "width_colors"]
