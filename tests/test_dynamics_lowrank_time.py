"""The variances' quadratic forms at many times (`_lowrank_time`) against the time-by-time computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkit.dynamics._lowrank_time import TOLERANCE, column_weights, segment_decays, time_quadratic_forms
from ntkit.dynamics.time import integrated_decay

pytestmark = pytest.mark.usefixtures("one_thread")


def kernel_like(rng, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) like a kernel's: a few large, a spread, a dense cluster; and a PSD S that is
    not diagonal in their basis."""
    lam = np.sort(np.concatenate([[0.2, 0.05], 10 ** rng.uniform(-4, -2, n // 3),
                                  1e-4 * (1 + 0.5 * rng.random(n - 2 - n // 3))]))[::-1].copy()
    F = rng.standard_normal((n, n)) / np.sqrt(n)
    S = F @ F.T + np.diag(rng.uniform(0.01, 3.0, n))
    return torch.from_numpy(lam), torch.from_numpy(S)


def direct(P: torch.Tensor, S: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    return torch.stack([((P * d) @ S * (P * d)).sum(1) for d in D])


TIME_GRIDS = {"50 log-spaced": np.logspace(0, 5, 50), "with 0 and inf": np.array([0.0, 3.0, 300.0, np.inf]),
              "one time": np.array([7.0]), "linear": np.linspace(0.0, 2e3, 20)}


@pytest.mark.parametrize("grid", TIME_GRIDS)
def test_matches_the_time_by_time_quadratic_forms(rng, grid):
    n, m = 640, 24
    lam, S = kernel_like(rng, n)
    D = torch.from_numpy(integrated_decay(lam.numpy(), TIME_GRIDS[grid]) / n)
    P = torch.from_numpy(rng.standard_normal((m, n))) * torch.sqrt(lam * n)     # like K(X*, X) V
    plan = segment_decays(D, column_weights(P, S))
    assert len(plan.segments) > 1
    quad = time_quadratic_forms(P, S, D, plan)
    ref = direct(P, S, D)
    scale = ref.abs().amax(1, keepdim=True).clamp_min(1e-300)
    np.testing.assert_allclose((quad / scale).numpy(), (ref / scale).numpy(), rtol=0, atol=1e-10)


def test_segments_reproduce_the_weighted_decays_at_every_time(rng):
    """The guarantee of the module docstring: each time's row of D, weighted, to relative accuracy ~ tol; a
    lone eigenvalue of large weight (like the top one of a kernel) is then kept to that accuracy too."""
    n = 640
    lam, _ = kernel_like(rng, n)
    D = torch.from_numpy(integrated_decay(lam.numpy(), np.logspace(-1, 5, 60)) / n)
    weights = torch.from_numpy(rng.uniform(0.5, 2.0, n)) * torch.sqrt(lam)
    weights[0] *= 1e4
    plan = segment_decays(D, weights)
    approx = torch.cat([s.A @ s.B for s in plan.segments], dim=1)
    row_error = torch.linalg.vector_norm((approx - D) * weights, dim=1)
    assert float((row_error / torch.linalg.vector_norm(D * weights, dim=1)).max()) < 30 * TOLERANCE[torch.float64]
    assert float(((approx[:, 0] - D[:, 0]) / D[:, 0]).abs().max()) < 1e-9
    assert plan.segments[-1].rank <= 10                                # the dense cluster: low rank in time
    assert plan.multiply_adds(60) < 0.5 * 60 * n * n / 2               # the point: less than time by time


def test_unsorted_eigenvalues_and_float32(rng):
    """Columns in any order (segments then own scattered columns) and float32 inputs."""
    n, m = 512, 16
    lam, S = kernel_like(rng, n)
    order = torch.from_numpy(rng.permutation(n))
    lam, S = lam[order], S[order][:, order]
    D = torch.from_numpy(integrated_decay(lam.numpy(), np.logspace(0, 4, 30)) / n)
    P = torch.from_numpy(rng.standard_normal((m, n)))
    P[:, :5] = 0.0                                      # weightless columns (factored as zero, not NaN)
    ref = direct(P, S, D)
    scale = ref.abs().amax(1, keepdim=True)
    quad = time_quadratic_forms(P, S, D)
    np.testing.assert_allclose((quad / scale).numpy(), (ref / scale).numpy(), rtol=0, atol=1e-10)
    quad32 = time_quadratic_forms(P.float(), S.float(), D.float())
    assert quad32.dtype == torch.float32
    np.testing.assert_allclose((quad32.double() / scale).numpy(), (ref / scale).numpy(), rtol=0, atol=1e-4)
