"""The paper's experiments (Section 6): Figures 1-3 with plots, numbers and a report.

    from ntkit.experiments import reproduce
    reproduce("all", "out")            # the default CPU-sized run; full=True for the paper's sizes

One module per figure (`fig1`, `fig2`, `fig3`: compute, measure, plot, claims, run), `settings`
(default and full sizes), `report` (metrics.json and report.md), `runner` (`reproduce`).
"""

from .common import Context
from .report import Claim, FigureResult, write_report
from .runner import FIGURES, reproduce
from .settings import DEFAULT, FULL, Figure1Settings, Figure2Settings, Figure3Settings, get_settings

__all__ = ["DEFAULT", "FIGURES", "FULL", "Claim", "Context", "Figure1Settings", "Figure2Settings",
           "Figure3Settings", "FigureResult", "get_settings", "reproduce", "write_report"]
