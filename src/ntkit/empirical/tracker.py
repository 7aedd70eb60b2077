"""`NTKTracker`: the empirical NTK on a probe set, recorded during any training loop.

Theorem 2 of the paper: in the infinite-width limit the NTK stays constant during training; at
finite width it moves, and less so the wider the network (Figure 1: the NTK "inflates" after
training, much less at width 10000 than at 500). The tracker measures exactly that:

    relative_change(t) = ||Theta(t) - Theta(0)||_F / ||Theta(0)||_F      on the probe set.

On the paper's networks it uses the structured path, whose cost is a forward and a backward pass
of the probe set plus N_probe^2 times the sum of the widths: cheap next to training at width 10000.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .._checks import check_positive_int
from .api import empirical_ntk
from .common import as_inputs, model_values, takes_ids


class NTKTracker:
    """Records `empirical_ntk(model, X_probe, mode=mode)` whenever `maybe_record(step)` sees step % every == 0.

    For example::

        tracker = NTKTracker(net, X_probe, every=10)
        for step in range(steps):
            tracker.maybe_record(step)
            ... one optimizer step ...
        tracker.relative_change()   # one value per record, 0 for the first

    Attributes: `steps` (the recorded steps), `kernels` (the recorded Theta, torch tensors:
    (P, P) for mode="trace", (P, P, K) "diagonal", (P, P, K, K) "full").
    """

    def __init__(self, model: nn.Module, X_probe: object, every: int = 1, mode: str = "trace",
                 method: str = "auto", block_size: int | None = None):
        trainable, _ = model_values(model, None)
        self.model = model
        self.X_probe, _ = as_inputs(X_probe, "X_probe", next(iter(trainable.values())), takes_ids(model))
        self.every = check_positive_int(every, "every")
        self.mode, self.method, self.block_size = mode, method, block_size
        self.steps: list[int] = []
        self.kernels: list[torch.Tensor] = []
        flags = {module: module.training for module in model.modules()}
        model.eval()
        try:
            empirical_ntk(model, self.X_probe[:1], mode=mode, method=method, progress=False)  # check arguments now
        finally:
            for module, flag in flags.items():
                module.training = flag

    def maybe_record(self, step: int) -> bool:
        """Record Theta at `step` if step % every == 0; returns whether it did."""
        step = check_positive_int(step, "step", minimum=0)
        if step % self.every:
            return False
        self.record(step)
        return True

    def record(self, step: int) -> torch.Tensor:
        """Record Theta now, as the value at `step`; returns it. The NTK is taken in eval mode (BatchNorm's
        running statistics, no dropout); each module's training flag is restored afterwards."""
        flags = {module: module.training for module in self.model.modules()}
        self.model.eval()
        try:
            theta = empirical_ntk(self.model, self.X_probe, mode=self.mode, method=self.method,
                                  block_size=self.block_size, progress=False)
        finally:
            for module, flag in flags.items():
                module.training = flag
        self.steps.append(int(step))
        self.kernels.append(theta.detach().clone())
        return theta

    def relative_change(self) -> np.ndarray:
        """||Theta(t) - Theta(0)||_F / ||Theta(0)||_F for every record, Theta(0) the first one."""
        if not self.kernels:
            raise ValueError("nothing recorded yet: call maybe_record(step) or record(step) during training")
        first = self.kernels[0].to(torch.float64)
        norm = float(torch.linalg.vector_norm(first))
        if norm == 0.0:
            raise ValueError("the first recorded NTK is zero, so its relative change is undefined")
        return np.array([float(torch.linalg.vector_norm(k.to(torch.float64) - first)) / norm
                         for k in self.kernels])

    def __repr__(self) -> str:
        return f"NTKTracker(every={self.every}, mode={self.mode!r}, records={len(self.steps)})"
