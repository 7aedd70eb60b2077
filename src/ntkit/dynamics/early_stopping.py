"""Early stopping along the closed-form trajectory, and how much of a target is learned by time t.

Section 5 of the paper: the error along the kernel principal component i decays as exp(-lambda_i t),
so the components with large lambda_i are learned first; stopping at time t keeps the components
with lambda_i t >> 1 and leaves those with lambda_i t << 1 (the motivation for early stopping).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._checks import check_real
from .least_squares import LeastSquares, check_targets
from .spectrum import Spectrum, gram_spectrum
from .time import check_times, remaining


@dataclass(frozen=True)
class EarlyStopping:
    """The stopping time chosen on a validation set.

    Attributes:
        time: the time t with the smallest validation cost. loss: that cost.
        times: (T,) the candidate times. losses: (T,) the validation cost (1/2M) sum ||f_t(x) - y||^2 at each.
    """

    time: float
    loss: float
    times: np.ndarray
    losses: np.ndarray


def default_times(dynamics: LeastSquares, count: int = 200) -> np.ndarray:
    """0 and `count` log-spaced times from 0.01 / lambda_max to 100 / lambda_min (positive rates)."""
    rates = dynamics.spectrum.rates(dynamics.ridge).cpu().numpy()
    positive = rates[rates > rates.max() * dynamics.spectrum.n * np.finfo(np.float64).eps]
    return np.concatenate([[0.0], np.logspace(np.log10(0.01 / positive.max()), np.log10(100 / positive.min()), count)])


def early_stopping_time(dynamics: LeastSquares, K_val_train: Any, y_val: Any, *, times: Any = None,
                        f0_val: Any = None) -> EarlyStopping:
    """Pick the time that minimizes the validation cost along the closed-form trajectory of `dynamics`.

    Args:
        dynamics: a `LeastSquares` fitted on the training set.
        K_val_train: (M, N) cross Gram K(X_val, X_train). y_val: (M[, k]) validation targets.
        times: candidate times (default `default_times`: 0 and 200 log-spaced times over the spectrum).
        f0_val: outputs at initialization on the validation points (default 0).
    """
    candidates = default_times(dynamics) if times is None else check_times(times, "times")[0]
    predictions = dynamics.predict(K_val_train, candidates, f0_test=f0_val)
    pred = torch.as_tensor(predictions, dtype=torch.float64)
    m = pred.shape[1]
    target = check_targets(y_val, m, "y_val", torch.float64, pred.device)
    pred = pred.reshape(len(candidates), m, -1)
    if pred.shape[2] != target.shape[1]:
        raise ValueError(f"y_val must have {pred.shape[2]} output columns like y_train, got {target.shape[1]}")
    losses = (0.5 * ((pred - target[None]) ** 2).sum((1, 2)) / m).cpu().numpy()
    best = int(np.argmin(losses))
    return EarlyStopping(time=float(candidates[best]), loss=float(losses[best]), times=candidates, losses=losses)


def converged_fraction(K_train: Any, target: Any, t: Any, *, tolerance: float = 0.01) -> Any:
    """The share of a target's p_in energy that lies in components converged by time t.

    Writing the target on the data as f*(X) = sum_i c_i f^(i)(X) in the kernel principal components,
    component i counts as converged when its remaining error exp(-lambda_i t) <= tolerance; the result is
    sum_{converged} c_i^2 / sum_i c_i^2 (a float for a scalar t, an array (T,) for T times).

    Args:
        K_train: (N, N) Gram (or its `Spectrum`). target: (N,) or (N, k) values f*(X). t: time(s) >= 0.
        tolerance: in (0, 1), the remaining error below which a component counts as learned.
    """
    tol = float(check_real(tolerance, "tolerance", minimum=0.0, strict=True))
    if tol >= 1:
        raise ValueError(f"tolerance must be < 1, got {tol}")
    spectrum = gram_spectrum(K_train, "K_train") if not isinstance(K_train, Spectrum) else K_train
    V = spectrum.eigenvectors
    y = check_targets(target, spectrum.n, "target", V.dtype, V.device)
    energy = ((V.T @ y) ** 2).sum(1).cpu().numpy()                         # c_i^2 per component
    total = energy.sum()
    if total == 0:
        raise ValueError("target is zero on the data: no energy to split")
    times, scalar = check_times(t)
    done = remaining(spectrum.eigenvalues.cpu().numpy(), times) <= tol   # (T, N)
    fraction = (done * energy[None, :]).sum(1) / total
    return float(fraction[0]) if scalar else fraction
