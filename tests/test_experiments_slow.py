"""Heavier runs of the experiments (pytest -m slow): the paper's findings at real sizes.

Figure 2 at the paper's exact sizes (widths 50 and 1000, 10 inits, 1000 steps) and Figure 1 at the
default run's sizes: every claim of the paper that these figures test must be borne out.
"""

from __future__ import annotations

import pytest

from ntkit.experiments import fig1, fig2
from ntkit.experiments.common import Context
from ntkit.experiments.settings import DEFAULT, FULL

CPU = Context(device="cpu", seed=0, progress=False, download=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_figure2_at_the_papers_sizes() -> None:
    settings = FULL["fig2"]
    result = fig2.compute(settings, CPU)
    metrics = fig2.measure(result, settings)
    for claim in fig2.claims(metrics, settings):
        assert claim.holds, claim.evidence
    for width in settings.widths:
        assert metrics[f"n={width}"]["largest final training loss"] < 1e-6


@pytest.mark.slow
def test_figure1_at_the_default_sizes() -> None:
    settings = DEFAULT["fig1"]
    result = fig1.compute(settings, CPU)
    metrics = fig1.measure(result, settings)
    for claim in fig1.claims(metrics, settings):
        assert claim.holds, claim.evidence
