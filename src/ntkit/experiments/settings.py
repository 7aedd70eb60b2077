"""Sizes of the three experiments of Section 6: the paper's (`--full`) and the default CPU run.

The paper's values are restored in the project's paper NOTES (Section 6). The default run must
finish in about ten minutes on a 2-core CPU, so it reduces, keeping two widths a decade apart:
- Figure 1: widths 100 and 1000 (paper: 500 and 10000).
- Figure 2: 400 steps (t = 400) instead of 1000: the slowest direction of the 4-point kernel
  dynamics has lambda_min(Theta/N) = 0.038, so exp(-lambda_min t) = 2e-7, as converged as t = 1000.
- Figure 3: widths 30 and 300 (paper: 100, 1000, 10000), and the paper's final time t = 4000
  reached by 800 steps at learning rate 5 (the paper's clock t = lr * steps). In the limit the
  discrete steps give ||g|| = 0.5 (1 - lr lambda_2)^s instead of 0.5 exp(-lambda_2 t): on MNIST
  (lambda_2 = 0.0012) they differ by at most 5e-4, against 1e-4 at the paper's lr = 1. Checked on
  a width-300 net on MNIST: 800 steps at lr 5 and 4000 at lr 1 give max ||h_t|| 0.0924 and 0.0923,
  max | ||g_t|| - limit | 0.1243 and 0.1240.
The report lists every value next to the paper's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .._checks import check_choice, check_positive_int, check_real

# Figure 2's four training points on the unit circle, as angles gamma with x = (sin gamma, cos gamma),
# and their targets: not printed in the paper; these are the authors' script's (see the paper NOTES).
FIG2_GAMMAS = (-2.194, -0.931, 0.963, 2.226)
FIG2_TARGETS = (-0.4, -0.2, 0.3, 0.3)


@dataclass(frozen=True)
class Figure1Settings:
    """NTK convergence: Theta^(L)(x0, x) on the unit circle at t = 0 and t = steps * lr."""

    depth: int = 4              # L weight layers
    beta: float = 0.1
    widths: tuple[int, ...] = (500, 10_000)
    n_inits: int = 10           # random initializations per width
    steps: int = 200            # gradient-descent steps between the two kernels
    lr: float = 1.0
    batch_size: int = 100       # a fresh batch of N(0, I_2) inputs each step, target f*(x) = x1 x2
    n_angles: int = 201         # odd, so that gamma = 0 (x0 = (1, 0)) is one of the points

    def __post_init__(self) -> None:
        _validate(self)
        if self.n_angles % 2 == 0:
            raise ValueError(f"n_angles must be odd (gamma = 0 must be a point), got {self.n_angles}")


@dataclass(frozen=True)
class Figure2Settings:
    """Kernel regression: networks trained on 4 points of the circle vs the t -> inf Gaussian."""

    depth: int = 4
    beta: float = 0.1
    widths: tuple[int, ...] = (50, 1000)
    n_inits: int = 10
    steps: int = 1000
    lr: float = 1.0
    gammas: tuple[float, ...] = FIG2_GAMMAS
    targets: tuple[float, ...] = FIG2_TARGETS
    n_angles: int = 201

    def __post_init__(self) -> None:
        _validate(self)
        if len(self.gammas) != len(self.targets) or not self.gammas:
            raise ValueError(f"gammas and targets must have the same positive length, got {len(self.gammas)} "
                             f"and {len(self.targets)}")


@dataclass(frozen=True)
class Figure3Settings:
    """MNIST: convergence along the 2nd kernel principal component of the limiting NTK."""

    depth: int = 5              # the authors' script: five weight layers, pixels in [0, 1]
    beta: float = 0.1
    n_digits: int = 512
    widths: tuple[int, ...] = (100, 1000, 10_000)
    n_runs: int = 2             # independent trials per width
    steps: int = 4000
    lr: float = 1.0
    amplitude: float = 0.5      # f* = f_theta(0) + amplitude * f^(component)
    component: int = 2
    n_components: int = 3
    record_every: int = 20      # steps between recorded points of the curves
    split: str = "test"         # the MNIST split the digits are drawn from

    def __post_init__(self) -> None:
        _validate(self)
        if not 1 <= self.component <= self.n_components:
            raise ValueError(f"component must be in 1..n_components={self.n_components}, "
                             f"got {self.component}")
        check_choice(self.split, "split", ("train", "test"))
        if self.n_components < 3:
            raise ValueError(f"n_components must be >= 3 (panel (a) plots f^(2) and f^(3)), "
                             f"got {self.n_components}")
        if self.n_components > self.n_digits:
            raise ValueError(f"n_components must be at most n_digits={self.n_digits}, "
                             f"got {self.n_components}")


def _validate(settings: Any) -> None:
    """Integers >= 1 (steps >= 0), positive learning rate and beta >= 0, non-empty widths."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name == "widths":
            if not isinstance(value, tuple) or not value:
                raise ValueError(f"widths must be a non-empty tuple of integers, got {value!r}")
            for width in value:
                check_positive_int(width, "widths")
        elif f.type == "int":
            check_positive_int(value, f.name, minimum=0 if f.name == "steps" else 1)
    check_real(settings.lr, "lr", minimum=0.0, strict=True)
    check_real(settings.beta, "beta", minimum=0.0)


FULL: dict[str, Any] = {
    "fig1": Figure1Settings(),
    "fig2": Figure2Settings(),
    "fig3": Figure3Settings(),
}

DEFAULT: dict[str, Any] = {
    "fig1": Figure1Settings(widths=(100, 1000), n_inits=10),
    "fig2": Figure2Settings(steps=400),
    "fig3": Figure3Settings(widths=(30, 300), steps=800, lr=5.0, record_every=8),
}


def get_settings(figure: str, full: bool = False) -> Any:
    """The settings of `figure` ("fig1", "fig2", "fig3"): the paper's with `full`, else the default run's."""
    table = FULL if full else DEFAULT
    if figure not in table:
        raise ValueError(f"figure must be one of {', '.join(map(repr, table))}; got {figure!r}")
    return table[figure]


def differences(settings: Any) -> dict[str, tuple[Any, Any]]:
    """{field: (this run's value, the paper's value)} for each field that differs from the paper's."""
    paper = FULL[key_of(settings)]
    return {f.name: (getattr(settings, f.name), getattr(paper, f.name)) for f in fields(settings)
            if getattr(settings, f.name) != getattr(paper, f.name)}


def key_of(settings: Any) -> str:
    """"fig1", "fig2" or "fig3" for a settings object."""
    for key, value in FULL.items():
        if type(value) is type(settings):
            return key
    raise TypeError(f"not an experiment's settings: {type(settings).__name__}")


def as_dict(settings: Any) -> dict[str, Any]:
    """The settings as JSON-ready values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}


__all__ = ["DEFAULT", "FULL", "Figure1Settings", "Figure2Settings", "Figure3Settings", "as_dict",
           "differences", "get_settings", "key_of", "replace"]
