"""Range checks for kernel recursions: overflow and underflow caught on the diagonals, layer by layer.

A kernel K is positive semi-definite, so |K(x, y)| <= sqrt(K(x, x) K(y, y)): its diagonal bounds the
whole Gram. An architecture therefore checks only the diagonals it computes anyway (O(N) per layer),
and a Gram built from checked diagonals stays in range. What it calls:

    tracker = RangeTracker(dtype)
    tracker.add(q, "the NNGP", layer)             # after each layer, for each kernel's diagonal
    tracker.check(advice)                         # once, at the end: raises KernelRangeError (a ValueError)

`check` takes two reductions per layer and synchronizes once; only when something is out of range does
it look closer (which entries, which layer) and build the message. Below the tracker: what the checks of a
fully-connected recursion (`ntkit.kernels.sigma_diagonals`) need to judge an underflow, to advise, and to refuse
a quadrature that cannot resolve the variances it is given (any architecture whose layers apply an activation to
a Gaussian of known variance can call the same functions).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

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
    at `layer` (1-based; or a text naming the place: "layer 2 (Conv2d)", "the input"). Values above
    finfo.max / HEADROOM, inf or NaN are an overflow (an error). With `low`, values below the smallest normal
    number are handed to `underflow(layer, small)` (given to `check`), which says what they mean: None (exact
    zeros, or harmless), "warn" (the result is the nearest value the dtype holds) or "error" (digits that later
    layers needed were lost). Nothing is synchronized until `check`.
    """

    def __init__(self, dtype: torch.dtype):
        info = torch.finfo(dtype)
        self.dtype = dtype
        self.limit = info.max / HEADROOM
        self.tiny = info.tiny
        self.entries: list[tuple[torch.Tensor, str, int | str, bool]] = []

    def add(self, values: torch.Tensor, what: str, layer: int | str, low: bool = True) -> None:
        if values.numel():
            self.entries.append((values.detach(), what, layer, low))

    def check(self, advice: Callable[[], tuple[str, str]],
              underflow: Callable[[int | str, torch.Tensor], str | None] | None = None) -> None:
        """Raise `KernelOverflowError` / `KernelUnderflowError` (or warn `KernelUnderflowWarning`) naming the first
        layer out of range, with the fixes `advice()` gives (against overflow, against underflow): called only then."""
        if not self.entries:
            return
        extremes = [torch.aminmax(v) for v, *_ in self.entries]      # one reduction per entry
        # NaN compares False with everything, so count it as too high
        highs = torch.nan_to_num(torch.stack([e.max for e in extremes]), nan=math.inf, posinf=math.inf)
        lows = torch.stack([e.min if low else e.min.new_ones(()) for e, (_, _, _, low) in
                            zip(extremes, self.entries, strict=True)])
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
                    f"{what} exceeds the {name} range ({RANGES.get(self.dtype, 'its largest value')}) at "
                    f"{_place(layer)} (the diagonal reaches {shown}): {fix_overflow}")
            verdict = "error" if underflow is None else underflow(layer, values < self.tiny)
            smallest = SMALLEST.get(self.dtype, "its smallest normal value")
            if verdict == "error":
                raise KernelUnderflowError(
                    f"{what} underflows the {name} range (positive values below {smallest} round to 0) at "
                    f"{_place(layer)}, and later layers needed those digits: {fix_underflow}")
            if verdict == "warn" and not warned:
                warned = True
                warnings.warn(
                    f"{what} underflows the {name} range at {_place(layer)}: values below {smallest} are returned "
                    f"as 0 or with few digits (the nearest {name} values), and so is the kernel between those inputs "
                    f"and the others. For their digits: {fix_underflow}",
                    KernelUnderflowWarning, stacklevel=caller_stacklevel())


def caller_stacklevel() -> int:
    """The `stacklevel` that makes a warning raised by the caller of this function point at the first frame
    outside the ntkit package: the user's own call, however deep the architecture's path into ntkit."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _place(layer: int | str) -> str:
    return f"layer {layer}" if isinstance(layer, int) else layer


def advice(dtype: torch.dtype, against_overflow: str, against_underflow: str) -> tuple[str, str]:
    """The fixes both errors name: a wider dtype first when there is one, then the settings to change."""
    wider = "use float64, or " if dtype != torch.float64 else ""
    return f"{wider}{against_overflow}", f"{wider}{against_underflow}"


# ---------------------------------------------------------------- the checks of a fully-connected recursion
# `rec` is a `ntkit.kernels.Recursion` (its `scales` per weight layer, its `activations` per map, its `depth`); the
# diagonals are its Sigma^(l)(x, x).
RESOLVED_VARIANCE = 2.0      # quadrature is accurate to about 1e-8 up to here (`activations.quadrature`)
RESOLUTION_TOL = 1e-2        # relative error of a quadrature map above which the kernel is refused


def check_resolution(rec: Any, diagonals: list[torch.Tensor], want_ntk: bool) -> None:
    """For activations by quadrature: the largest and smallest variance above RESOLVED_VARIANCE fed to the maps of
    each layer, checked against a 1-D rule that resolves any scale (`Quadrature.resolution_error`); a map off by
    more than RESOLUTION_TOL raises a ValueError naming the layer, the variance and the fixes. The SigmaDot map
    enters only the NTK, so it is checked only when the NTK is wanted."""
    for layer, (q, activation) in enumerate(zip(diagonals[:-1], rec.activations, strict=True), start=2):
        check_resolved(activation, q, f"layer {layer}", want_ntk)


def check_resolved(activation: Any, q: torch.Tensor, layer: str, want_ntk: bool) -> None:
    """`check_resolution` for the variances q fed to one `activation` at `layer` (a text: "layer 3")."""
    error_of = getattr(activation, "resolution_error", None)
    if error_of is None:
        return
    large = q.detach()[q.detach() > RESOLVED_VARIANCE]
    if not large.numel():
        return
    probe = torch.stack([large.max(), large.min()])
    errors = error_of(probe)[:, : 2 if want_ntk else 1]
    worst = float(errors.max())
    if worst > RESOLUTION_TOL:
        index = int(errors.max(1).values.argmax())
        which = "E[sigma'(u)^2] (SigmaDot)" if int(errors[index].argmax()) == 1 else "E[sigma(u)^2] (Sigma)"
        raise ValueError(
            f"the quadrature of activation {activation.name!r} does not resolve {which} at variance "
            f"{float(probe[index]):.2g} (the input of {layer}): relative error {worst:.1g}, above "
            f"{RESOLUTION_TOL:g}. Its derivative varies on a scale far below the spread sqrt(q). Use a closed-form "
            f"activation (erf has the shape of tanh and sigmoid), inputs of smaller norm or a smaller W_std "
            f"(variances up to about 20 keep 1e-4), or a higher quadrature_degree")


def advice_for(X: torch.Tensor, rec: Any) -> tuple[str, str]:
    """The advice of the range errors, with the settings that set the scale."""
    norms = log10_norms(X)
    finite = norms[torch.isfinite(norms)]
    largest = f"1e{float(finite.max()):.0f}" if finite.numel() else "-"
    smallest = f"1e{float(finite.min()):.0f}" if finite.numel() else "-"
    w, b = (_settings([number(pair[i]) for pair in rec.scales]) for i in (0, 1))
    return advice(X.dtype,
                  f"a smaller W_std (now {w}) or b_std (now {b}), fewer layers (now {rec.depth}), or inputs "
                  f"of smaller norm (the largest row norm is about {largest})",
                  f"a larger W_std (now {w}), b_std > 0 (now {b}), fewer layers (now {rec.depth}), or inputs "
                  f"of larger norm (the smallest nonzero row norm is about {smallest})")


def _settings(values: list[float]) -> str:
    """One setting of every weight layer as the advice names it: "1" when all agree, else "1.5, 0.9, 1"."""
    return f"{values[0]:g}" if len(set(values)) == 1 else ", ".join(f"{v:g}" for v in values)


def log10_norms(X: torch.Tensor) -> torch.Tensor:
    """log10 |x| of each row without overflow or underflow (-inf for a zero row)."""
    X = X.detach()
    top = X.abs().amax(1) if X.shape[1] else X.new_zeros(X.shape[0])
    scaled = X / torch.where(top > 0, top, 1.0)[:, None]
    return torch.log10(top) + 0.5 * torch.log10((scaled * scaled).sum(1).clamp(min=1.0))


def underflow_verdict(X: torch.Tensor, rec: Any, diagonals: list[torch.Tensor], layer: int,
               small: torch.Tensor) -> str | None:
    """What the Sigma^(layer) diagonal entries below the smallest normal number (`small`) mean (slow path only):
    None where the exact value is 0 (a zero input without bias) or where later layers do not need its digits (a
    bias, or sigma(0) != 0, dominates them); "warn" where the final diagonal is below the normal range anyway
    (0 is the nearest value the dtype holds); "error" where the exact final value is in range but is returned as
    0 or with lost digits. The exact final value is estimated in log10 from the inputs' norms and each layer's
    small-variance gain E[sigma(u)^2] / q (exactly W_std^2 (1 + a^2) / 2 per layer for the ReLU family)."""
    info = torch.finfo(X.dtype)
    small = small & ~exact_zeros(X, rec, layer)
    if not bool(small.any()):
        return None
    w2s = [number(w) ** 2 for w, _ in rec.scales]
    unbiased = all(number(b) == 0 for _, b in rec.scales)
    acts = rec.activations
    at_zero = any(float(act.sigma_diag(X.new_zeros(1))[0]) != 0 for act in acts)
    final_small = diagonals[-1] < info.tiny
    if bool((small & ~final_small).any()) and unbiased and not at_zero:
        return "error"                       # a subnormal value scaled back into range: its digits are lost
    rows = small & final_small
    if not bool(rows.any()):
        return None
    if min(w2s) == 0:
        return "warn"
    probe = torch.tensor([info.tiny * 2.0**20], dtype=X.dtype, device=X.device)
    gains = [math.log10(max(float(act.sigma_diag(probe)[0] / probe[0]), 1e-300)) for act in acts]
    estimate = math.log10(w2s[0] / X.shape[1]) + 2 * float(log10_norms(X[rows]).max())
    estimate += sum(math.log10(w2) + gain for w2, gain in zip(w2s[1:], gains, strict=True))
    return "error" if estimate >= math.log10(info.tiny) else "warn"


def exact_zeros(X: torch.Tensor, rec: Any, layer: int) -> torch.Tensor:
    """Which rows have Sigma^(layer)(x, x) = 0 in exact arithmetic: no bias, and a zero input (or zero
    weights), carried through layers whose activation has sigma(0) = 0 (E[sigma(u)^2] = sigma(0)^2 at
    u ~ N(0, 0)). Positive variances give positive E[sigma(u)^2] unless sigma vanishes almost everywhere."""
    scales = [(number(w) == 0, number(b) == 0) for w, b in rec.scales]
    zero_w, zero_b = scales[0]
    zeros = ((X.detach() == 0).all(1) | zero_w) & zero_b
    probe = torch.tensor([0.0, 1.0], dtype=X.dtype, device=X.device)
    for activation, (zero_w, zero_b) in zip(rec.activations[:layer - 1], scales[1:layer], strict=True):
        at_zero, at_one = (float(v) for v in activation.sigma_diag(probe))
        vanishing = at_one == 0                                          # sigma = 0 almost everywhere
        zeros = zeros if at_zero == 0 else torch.zeros_like(zeros)
        zeros = (zeros | zero_w | vanishing) & zero_b
    return zeros


def number(value: float | torch.Tensor) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
