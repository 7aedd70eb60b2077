"""Full-batch gradient descent of a finite network, on the paper's cost and clock.

The cost is C = (1/2N) sum_i ||f(x_i) - y_i||^2 = (1/2) ||f - f*||^2_{p_in} (Section 5), so that
s steps at learning rate eta reach the paper's time t = eta * s and can be compared with the
kernel dynamics of `LeastSquares` and `InfiniteWidthGP` at the same t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import as_matrix, as_tensor, check_positive_int, check_real
from ..progress import progress as progress_bar


@dataclass(frozen=True)
class TrainingHistory:
    """What `train_network` recorded, at the recorded steps (every `record_every` and the last).

    Attributes:
        steps: (R,) step numbers s. times: (R,) t = lr * s. loss: (R,) the cost C at those steps.
        train_outputs: (R, N, k) f(X). probe_outputs: (R, M, k) f(probe), or None.
        lr: the learning rate.
    """

    steps: np.ndarray
    times: np.ndarray
    loss: np.ndarray
    train_outputs: torch.Tensor
    probe_outputs: torch.Tensor | None
    lr: float


def train_network(model: nn.Module, X: Any, y: Any, *, lr: float, steps: int, probe: Any = None,
                  record_every: int = 1, tracker: Any = None, progress: bool | None = None) -> TrainingHistory:
    """Train `model` in place by full-batch gradient descent on C = (1/2N) sum ||f(x_i) - y_i||^2.

    Args:
        model: any module mapping (N, n0) inputs to (N, k) (or (N,)) outputs.
        X: (N, n0) inputs; y: (N,) or (N, k) targets (converted to the model's dtype and device).
        lr: learning rate eta > 0 (the paper: 1.0). steps: number of steps s >= 0.
        probe: (M, n0) extra inputs whose outputs are recorded (e.g. a test set or a curve).
        record_every: record outputs and loss every this many steps (and always at 0 and the end).
        tracker: optional object with `.maybe_record(step)` (e.g. `ntkit.NTKTracker`), called before
            each update and after the last one.
        progress: show a progress bar (None: follow `ntkit.set_progress`).
    """
    lr = float(check_real(lr, "lr", minimum=0.0, strict=True))
    steps = check_positive_int(steps, "steps", minimum=0)
    record_every = check_positive_int(record_every, "record_every")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    Xt, yt, Pt = _training_data(X, y, probe, params[0].dtype, params[0].device)
    n = Xt.shape[0]

    def outputs(inputs: torch.Tensor) -> torch.Tensor:
        out = model(inputs)
        out = out.reshape(inputs.shape[0], -1)
        if out.shape[1] != yt.shape[1]:
            raise ValueError(f"the model has {out.shape[1]} outputs but y has {yt.shape[1]} columns")
        return out

    recorded: dict[str, list] = {"steps": [], "loss": [], "train": [], "probe": []}
    for step in progress_bar(range(steps + 1), total=steps + 1, desc="training", enabled=progress):
        if tracker is not None:
            tracker.maybe_record(step)
        f = outputs(Xt)
        cost = 0.5 * ((f - yt) ** 2).sum() / n                      # (1/2N) sum ||f(x_i) - y_i||^2
        value = float(cost.detach())
        if not np.isfinite(value):
            raise FloatingPointError(f"the cost became {value} at step {step}: lr = {lr:g} is too large")
        if step % record_every == 0 or step == steps:
            recorded["steps"].append(step)
            recorded["loss"].append(value)
            recorded["train"].append(f.detach().clone())
            if Pt is not None:
                with torch.no_grad():
                    recorded["probe"].append(outputs(Pt).clone())
        if step == steps:
            break
        grads = torch.autograd.grad(cost, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(g, alpha=lr)
    step_array = np.asarray(recorded["steps"], dtype=np.int64)
    return TrainingHistory(steps=step_array, times=lr * step_array.astype(np.float64),
                           loss=np.asarray(recorded["loss"]), train_outputs=torch.stack(recorded["train"]),
                           probe_outputs=torch.stack(recorded["probe"]) if Pt is not None else None, lr=lr)


def _training_data(X: Any, y: Any, probe: Any, dtype: torch.dtype, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """X (N, n0), y as (N, k) and the probe inputs (M, n0) or None, validated, in the model's dtype and device."""
    Xt = as_matrix(X, "X", dtype=dtype, device=device)[0]
    yt = as_tensor(y, "y", ndim=(1, 2), dtype=dtype, device=device)[0]
    if yt.shape[0] != Xt.shape[0]:
        raise ValueError(f"y must have one row per input: X has {Xt.shape[0]} rows, y has shape {tuple(yt.shape)}")
    Pt = None if probe is None else as_matrix(probe, "probe", dtype=dtype, device=device)[0]
    return Xt, yt.reshape(Xt.shape[0], -1), Pt
