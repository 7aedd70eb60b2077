"""The solvers of `InfiniteWidthGP`: one small interface, one class per solver in its own file, one registry.

`InfiniteWidthGP(..., solver=NAME)` reads `SOLVERS`, filled by each solver's module when imported:

- "cholesky" (`solver_cholesky.py`): exact; the Gram in memory, factored in place at t = inf, eigendecomposed at
  finite t; the only one that gives the std and the covariance (`InfiniteWidthGP` runs its algebra);
- "nystrom" (`solver_nystrom.py`): Falkon-style Nystrom kernel ridge regression on `n_centers` centres, t = inf only;
  exact with n_centers = N;
- "cg" (`solver_cg.py`): exact to the solver's tolerance; preconditioned CG at t = inf, Lanczos at finite t, on the
  Gram in memory when it fits the budget, else matrix-free (kernel tiles recomputed from X: memory O(N)).

"auto" takes the first of them, in that order (`Solver.preference`), whose `memory` estimate fits the budget. A new
solver is one new module: a `Solver` subclass with `fit` (its constructor), `mean`, `iterations`, `residual` and
`memory`, ending with `register(ItsClass)`, and one import line in `ntkit/dynamics/__init__.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from .. import memory
from .._checks import check_real
from ..progress import note

BUDGET_FRACTION = 0.8         # of the memory free on the device, when no budget is given


@dataclass
class Problem:
    """What a solver fits: the training data and every option of `InfiniteWidthGP` that solvers read.

    arch: the architecture (anything with `kernel_tiles` and `kernel`); X_train (N, ...) and y_train (N, k) tensors
    in the working dtype; get: the dynamics kernel ("ntk", or "nngp" when only the last layer trains); ridge >= 0;
    tol, max_iter: validated iterative options; n_centers, centers: Nystrom's; budget: bytes the solver may use."""

    arch: Any
    X_train: torch.Tensor
    y_train: torch.Tensor
    get: str
    ridge: float
    tol: float
    max_iter: int
    n_centers: int | None
    centers: str
    budget: float
    client: Any = None
    progress: bool | None = None
    seed: int = 0

    @property
    def n(self) -> int:
        return self.X_train.shape[0]

    @property
    def itemsize(self) -> int:
        return self.X_train.element_size()


class Solver:
    """The interface of a solver: fitted on construction, then `mean` at any time it supports."""

    name: ClassVar[str]
    preference: ClassVar[int]        # "auto" tries solvers by increasing preference
    finite_times: ClassVar[bool]     # gives the trained network at finite t (else at t = inf only)
    spread: ClassVar[bool] = False   # gives the std and the covariance (then `InfiniteWidthGP` runs the algebra)

    def __init__(self, problem: Problem):
        self.problem = problem

    @classmethod
    def memory(cls, problem: Problem) -> float:
        """Bytes this solver needs at least for `problem` (what "auto" compares with the budget)."""
        raise NotImplementedError

    @classmethod
    def check(cls, problem: Problem) -> None:
        """Refuse `problem` before any work (a MemoryError when asked for explicitly beyond the budget, ...)."""

    def mean(self, X_test: torch.Tensor, times: np.ndarray) -> torch.Tensor:
        """The mean of the trained networks at each time: (T, M, k)."""
        raise NotImplementedError

    @property
    def iterations(self) -> int:
        """Iterations of the t = inf solve (1 for a direct solver)."""
        return 1

    @property
    def residual(self) -> float:
        """Final relative residual of the t = inf solve (0 for a direct solver)."""
        return 0.0


SOLVERS: dict[str, type[Solver]] = {}


def register(solver: type[Solver]) -> type[Solver]:
    """Make `solver` available as solver=solver.name (and to "auto")."""
    SOLVERS[solver.name] = solver
    return solver


def names() -> tuple[str, ...]:
    """Every accepted solver= value."""
    return ("auto", *sorted(SOLVERS, key=lambda name: SOLVERS[name].preference))


def memory_budget(budget: float | None, device: torch.device) -> float:
    """Bytes the solvers may use: `budget`, or BUDGET_FRACTION of the device's free memory."""
    if budget is None:
        return BUDGET_FRACTION * memory.available_bytes(device)
    return float(check_real(budget, "memory_budget", minimum=0.0, strict=True))


def resolve_solver(solver: str, problem: Problem) -> type[Solver]:
    """The solver class for `solver`: the registered one, or for "auto" the first by preference whose memory
    estimate fits the budget (the last one, matrix-free CG, fits any budget that holds the data)."""
    if not isinstance(solver, str) or solver not in names():
        raise ValueError(f"solver must be one of {', '.join(map(repr, names()))}; got {solver!r}")
    if solver != "auto":
        return SOLVERS[solver]
    ranked = sorted(SOLVERS.values(), key=lambda cls: cls.preference)
    needs = {cls.name: cls.memory(problem) for cls in ranked}
    chosen = next((cls for cls in ranked if needs[cls.name] <= problem.budget), ranked[-1])
    estimates = ", ".join(f"{name} {memory.format_bytes(need)}" for name, need in needs.items())
    note(f"solver='auto' chose {chosen.name!r} for N = {problem.n:,} (needs: {estimates}; budget "
         f"{memory.format_bytes(problem.budget)})", problem.progress)
    return chosen


def check_interpolable(X: torch.Tensor, y: torch.Tensor, ridge: float) -> None:
    """With ridge = 0 the networks trained to t = inf interpolate the data, which is impossible when one point
    appears twice with different targets: a ValueError naming two such rows, for the solvers that solve for t = inf
    when built (Nystrom would otherwise return a least-squares fit where the exact solvers refuse). Rows are
    matched by a random projection first (O(N d)), then compared exactly."""
    if ridge > 0 or X.shape[0] < 2:
        return
    flat = X.reshape(X.shape[0], -1)
    direction = torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(0), dtype=flat.dtype)
    keys = flat @ direction.to(flat.device)
    order = torch.argsort(keys)
    same = (keys[order[1:]] == keys[order[:-1]]).nonzero().flatten()
    for k in same.tolist():
        i, j = sorted((int(order[k]), int(order[k + 1])))
        if torch.equal(flat[i], flat[j]) and not torch.equal(y[i], y[j]):
            raise ValueError(f"X_train rows {i} and {j} are the same point with different targets: no trained "
                             "network interpolates them with ridge = 0 (K is singular). Pass ridge > 0, or "
                             "remove the duplicate")
