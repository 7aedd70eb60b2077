"""Range checks for kernel recursions: overflow and underflow caught on the diagonals, layer by layer.

A kernel K is positive semi-definite, so |K(x, y)| <= sqrt(K(x, x) K(y, y)): its diagonal bounds the
whole Gram. An architecture therefore checks only the diagonals it computes anyway (O(N) per layer),
and a Gram built from checked diagonals stays in range. What it calls:

    tracker = RangeTracker(dtype)
    tracker.add(q, "the NNGP", layer)             # after each layer, for each kernel's diagonal
    tracker.check(advice)                         # once, at the end: raises KernelRangeError (a ValueError)

`check` takes two reductions per layer and synchronizes once; only when something is out of range does
it look closer (which entries, which layer) and build the message.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

#: Diagonal values above finfo.max / HEADROOM count as overflow: the off-diagonal values are bounded by
#: the diagonals' geometric mean only up to rounding.
HEADROOM = 2.0

RANGES = {torch.float32: "about 3.4e38", torch.float64: "about 1.8e308", torch.float16: "about 6.5e4",
          torch.bfloat16: "about 3e38"}
SMALLEST = {torch.float32: "about 1e-38", torch.float64: "about 2e-308", torch.float16: "about 6e-5",
            torch.bfloat16: "about 1e-38"}


class KernelRangeError(ValueError):
    """A kernel's values leave the range of its dtype (overflow to inf or underflow to 0): the settings
    (dtype, W_std, b_std, depth, input scale) do not fit together. `KernelOverflowError` (also an
    `OverflowError`) and `KernelUnderflowError` are the two cases."""


class KernelOverflowError(KernelRangeError, OverflowError):
    """The kernel exceeds the largest finite value of its dtype."""


class KernelUnderflowError(KernelRangeError):
    """A value that is positive in exact arithmetic rounded to zero (or lost its digits) at a layer, and later
    layers would have brought it back into range: the result would be wrong, not just rounded."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class KernelUnderflowWarning(UserWarning):
    """Kernel values below the dtype's smallest normal number were returned as 0 (or with few digits): the
    nearest values the dtype holds, so the result is still right to the dtype's range."""


class RangeTracker:
    """Collects each layer's diagonal and checks them all at once.

    `add(values, what, layer, low=True)`: `values` are diagonal values ("the NTK", "the NNGP", ...: `what`)
    at `layer` (1-based). Values above finfo.max / HEADROOM, inf or NaN are an overflow (an error). With `low`,
    values below the smallest normal number are handed to `underflow(layer, small)` (given to `check`), which
    says what they mean: None (exact zeros, or harmless), "warn" (the result is the nearest value the dtype
    holds) or "error" (digits that later layers needed were lost). Nothing is synchronized until `check`.
    """

    def __init__(self, dtype: torch.dtype):
        info = torch.finfo(dtype)
        self.dtype = dtype
        self.limit = info.max / HEADROOM
        self.tiny = info.tiny
        self.entries: list[tuple[torch.Tensor, str, int, bool]] = []

    def add(self, values: torch.Tensor, what: str, layer: int, low: bool = True) -> None:
        if values.numel():
            self.entries.append((values.detach(), what, layer, low))

    def check(self, advice: Callable[[], tuple[str, str]],
              underflow: Callable[[int, torch.Tensor], str | None] | None = None) -> None:
        """Raise `KernelOverflowError` / `KernelUnderflowError` (or warn `KernelUnderflowWarning`) naming the first
        layer out of range, with the fixes `advice()` gives (against overflow, against underflow): called only then."""
        if not self.entries:
            return
        # NaN compares False with everything, so count it as too high
        highs = torch.stack([torch.nan_to_num(v.amax(), nan=math.inf, posinf=math.inf) for v, *_ in self.entries])
        lows = torch.stack([v.amin() if low else v.new_ones(()) for v, _, _, low in self.entries])
        suspect = (highs > self.limit) | (lows < self.tiny)
        if not bool(suspect.any()):   # the one synchronization on the fast path
            return
        name = dtype_name(self.dtype)
        fix_overflow, fix_underflow = advice()
        warned = False
        for index in suspect.nonzero()[:, 0].tolist():
            values, what, layer, _ = self.entries[index]
            if bool(highs[index] > self.limit):
                value = float(highs[index])
                shown = "inf or NaN" if not math.isfinite(value) else f"{value:.2g}"
                raise KernelOverflowError(
                    f"{what} exceeds the {name} range ({RANGES.get(self.dtype, 'its largest value')}) at layer "
                    f"{layer} (the diagonal reaches {shown}): {fix_overflow}")
            verdict = "error" if underflow is None else underflow(layer, values < self.tiny)
            smallest = SMALLEST.get(self.dtype, "its smallest normal value")
            if verdict == "error":
                raise KernelUnderflowError(
                    f"{what} underflows the {name} range (positive values below {smallest} round to 0) at layer "
                    f"{layer}, and later layers needed those digits: {fix_underflow}")
            if verdict == "warn" and not warned:
                warned = True
                warnings.warn(
                    f"{what} underflows the {name} range at layer {layer}: values below {smallest} are returned "
                    f"as 0 or with few digits (the nearest {name} values), and so is the kernel between those inputs "
                    f"and the others. For their digits: {fix_underflow}",
                    KernelUnderflowWarning, stacklevel=5)


def advice(dtype: torch.dtype, against_overflow: str, against_underflow: str) -> tuple[str, str]:
    """The fixes both errors name: a wider dtype first when there is one, then the settings to change."""
    wider = "use float64, or " if dtype != torch.float64 else ""
    return f"{wider}{against_overflow}", f"{wider}{against_underflow}"
