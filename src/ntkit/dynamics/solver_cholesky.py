"""solver="cholesky": the exact solver. The Gram in memory, factored in place at t = inf and eigendecomposed at
finite t; `InfiniteWidthGP` runs this algebra itself (mean, std and covariance: `gaussian.py`)."""

from __future__ import annotations

from .. import memory
from .large_n import Problem, Solver, register

OVERHEAD = 1e9                # bytes the exact path needs beyond 1.25 x its Gram


class Cholesky(Solver):
    name = "cholesky"
    preference = 0
    finite_times = True
    spread = True

    @classmethod
    def memory(cls, problem: Problem) -> float:
        """The Gram, factored in place, plus working memory: 1.25 N^2 items + 1 GB."""
        return 1.25 * memory.array_bytes((problem.n, problem.n), problem.X_train.dtype) + OVERHEAD

    @classmethod
    def check(cls, problem: Problem) -> None:
        """A MemoryError naming the alternatives when the exact path does not fit the budget."""
        memory.require(cls.memory(problem), what="the exact solver (solver='cholesky')", n=problem.n,
                       device=problem.X_train.device,
                       alternative="solver='nystrom' (Nystrom, O(N M) memory) or solver='cg' (matrix-free, O(N) "
                                   "memory), or float32", available=int(problem.budget))


register(Cholesky)
