"""Time in the paper's dynamics, and the per-eigenvalue coefficients of the closed forms.

Time t is the paper's continuous time on the cost C = (1/2) ||f - f*||^2_{p_in} (Section 5).
Full-batch gradient descent with learning rate eta on the same cost, for s steps, is t = eta * s
(docs/paper.md, Section 5). Along an eigenvector of K / N with rate r = lambda + ridge / N:

    remaining error   exp(-r t)                  (continuous time)   (1 - eta r)^s         (s steps)
    integrated decay  (1 - exp(-r t)) / r        -> t   as r -> 0    (1 - (1 - eta r)^s) / r  -> eta s

The integrated decay is what carries the training residual to new points.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from .._checks import check_real


def time_from_steps(steps: Any, lr: float) -> Any:
    """t = lr * steps: the paper's time after `steps` gradient-descent steps at learning rate `lr`."""
    lr = float(check_real(lr, "lr", minimum=0.0, strict=True))
    s = check_steps(steps)[0]
    t = lr * s.astype(np.float64)
    return float(t[0]) if np.ndim(steps) == 0 else t


def steps_from_time(t: Any, lr: float) -> Any:
    """The number of gradient-descent steps at learning rate `lr` that reach time t (rounded)."""
    lr = float(check_real(lr, "lr", minimum=0.0, strict=True))
    times, scalar = check_times(t)
    if np.isinf(times).any():
        raise ValueError("t must be finite to convert it to a number of steps")
    steps = np.rint(times / lr).astype(np.int64)
    return int(steps[0]) if scalar else steps


def check_times(t: Any, name: str = "t") -> tuple[np.ndarray, bool]:
    """Times as a 1-D float64 array (inf allowed), and whether `t` was a scalar.

    Raises ValueError for NaN or negative times, TypeError for non-numbers.
    """
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    if isinstance(t, bool) or isinstance(t, (str, bytes)) or t is None:
        raise TypeError(f"{name} must be a number or an array of numbers, got {type(t).__name__}")
    try:
        arr = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a number or an array of numbers: {exc}") from exc
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a 1-D array of times, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must hold at least one time")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    if (arr < 0).any():
        raise ValueError(f"{name} must be >= 0 (time runs forward from initialization), got {arr.min()}")
    return arr.reshape(-1), arr.ndim == 0


def check_steps(steps: Any, name: str = "steps") -> tuple[np.ndarray, bool]:
    """Step counts as a 1-D int64 array of non-negative integers, and whether `steps` was a scalar."""
    if isinstance(steps, torch.Tensor):
        steps = steps.detach().cpu().numpy()
    if isinstance(steps, bool):
        raise TypeError(f"{name} must be an integer or an array of integers, got bool")
    arr = np.asarray(steps)
    if arr.ndim > 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-negative integer or a non-empty 1-D array of them")
    if not (np.issubdtype(arr.dtype, np.integer) or (isinstance(steps, numbers.Integral))):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or np.any(arr != np.rint(arr)):
            raise TypeError(f"{name} must hold integers, got {steps!r}")
    if (arr < 0).any():
        raise ValueError(f"{name} must be >= 0, got {arr.min()}")
    return arr.astype(np.int64).reshape(-1), arr.ndim == 0


def resolve_schedule(t: Any, steps: Any, lr: Any) -> tuple[np.ndarray, np.ndarray | None, float | None, bool]:
    """Either continuous times `t` or (`steps`, `lr`) of gradient descent; returns
    (times, steps or None, lr or None, scalar). The times of a discrete schedule are lr * steps."""
    if steps is None:
        if lr is not None:
            raise ValueError("lr is only used with steps= (discrete gradient descent); pass t= for continuous time")
        if t is None:
            raise ValueError("pass a time t (scalar, array, or np.inf), or steps= and lr=")
        times, scalar = check_times(t)
        return times, None, None, scalar
    if t is not None:
        raise ValueError("pass either t= (continuous time) or steps= and lr= (gradient descent), not both")
    if lr is None:
        raise ValueError("steps= needs the learning rate lr=")
    lr_value = float(check_real(lr, "lr", minimum=0.0, strict=True))
    s, scalar = check_steps(steps)
    return lr_value * s.astype(np.float64), s, lr_value, scalar


def integrated_decay(rates: np.ndarray, times: np.ndarray, steps: np.ndarray | None = None,
                     lr: float | None = None) -> np.ndarray:
    """(T, N) array of int_0^t exp(-r u) du = (1 - exp(-r t)) / r (or its gradient-descent version
    (1 - (1 - lr r)^s) / r), stable as r -> 0 (limit t, resp. lr * s) and equal to 1 / r at t = inf."""
    r = np.asarray(rates, dtype=np.float64)[None, :]
    if steps is None:
        t = np.asarray(times, dtype=np.float64)[:, None]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x = r * t
            finite = np.where(x > 0, -np.expm1(-x) / np.where(x > 0, x, 1.0), 1.0) * t   # t (1 - e^-x) / x
            inf_value = np.where(r > 0, 1.0 / np.where(r > 0, r, 1.0), np.inf)
        return np.where(np.isinf(t), inf_value, finite)
    check_gd_stable(rates, lr)
    s = np.asarray(steps, dtype=np.float64)[:, None]
    v = lr * r                                            # eta r, in [0, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        small = v < 1.0
        one_minus_power = np.where(small, -np.expm1(s * np.log1p(-np.where(small, v, 0.0))),
                                   1.0 - (1.0 - v) ** s)
        return np.where(r > 0, one_minus_power / np.where(r > 0, r, 1.0), lr * s)


def remaining(rates: np.ndarray, times: np.ndarray, steps: np.ndarray | None = None,
              lr: float | None = None) -> np.ndarray:
    """(T, N) array of exp(-r t) (or (1 - lr r)^s): the remaining fraction of the error along each eigenvector."""
    r = np.asarray(rates, dtype=np.float64)[None, :]
    if steps is None:
        t = np.asarray(times, dtype=np.float64)[:, None]
        with np.errstate(invalid="ignore"):
            return np.where(np.isinf(t), np.where(r > 0, 0.0, 1.0), np.exp(-r * np.where(np.isinf(t), 0.0, t)))
    check_gd_stable(rates, lr)
    return (1.0 - lr * r) ** np.asarray(steps, dtype=np.float64)[:, None]


def check_gd_stable(rates: np.ndarray, lr: float) -> None:
    """Gradient descent on the quadratic cost diverges when lr * lambda_max > 2."""
    top = float(np.max(rates))
    if lr * top > 2.0 * (1 + 1e-12):
        raise ValueError(f"lr = {lr:g} is too large: lr * lambda_max(K/N) = {lr * top:.4g} > 2, so gradient descent "
                         f"diverges. Use lr <= {2.0 / top:.4g}")
