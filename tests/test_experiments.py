"""The paper's three experiments, end to end at tiny sizes, with their numbers checked independently.

- Figure 1: the limit curve against the arc-cosine recursion written out here and NOTES.md's
  values; each network's curve against an explicit Jacobian product; wider nets closer to the limit
  and moving less in training.
- Figure 2: the limit's percentiles against the t -> infinity Gaussian written out here (NOTES.md);
  trained nets interpolate the data and fall near the limit's mean.
- Figure 3: kernel PCA against a direct eigendecomposition; ||g_0|| = 0.5 and h_0 = 0 exactly; a wide
  net follows 0.5 exp(-lambda_2 t); the offline fallback says it is not MNIST.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.data import circle_points
from ntkit.experiments import fig1, fig2, fig3
from ntkit.experiments.common import Context, derive_seed
from ntkit.experiments.report import Claim, FigureResult, jsonable, write_report
from ntkit.experiments.settings import (
    DEFAULT,
    FULL,
    Figure1Settings,
    Figure2Settings,
    Figure3Settings,
    differences,
    get_settings,
)

CPU = Context(device="cpu", seed=0, progress=False, download=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def relu_kernels(X: np.ndarray, Y: np.ndarray, depth: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Sigma^(L) and Theta^(L) of a ReLU net by the arc-cosine formulas of NOTES.md, in NumPy."""
    n0 = X.shape[1]
    qx = np.sum(X * X, 1) / n0 + beta**2
    qy = np.sum(Y * Y, 1) / n0 + beta**2
    sigma = X @ Y.T / n0 + beta**2
    theta = sigma.copy()
    for _ in range(depth - 1):
        norms = np.sqrt(np.outer(qx, qy))
        angle = np.arccos(np.clip(sigma / norms, -1.0, 1.0))
        sigma_dot = (np.pi - angle) / (2 * np.pi)
        sigma = norms * (np.sin(angle) + (np.pi - angle) * np.cos(angle)) / (2 * np.pi) + beta**2
        qx, qy = qx / 2 + beta**2, qy / 2 + beta**2
        theta = theta * sigma_dot + sigma
    return sigma, theta


def explicit_ntk(net: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor) -> np.ndarray:
    """Theta(x, y) = sum_p df(x)/dp df(y)/dp from a Jacobian built one sample at a time."""
    def jac(x: torch.Tensor) -> torch.Tensor:
        net.zero_grad()
        net(x.unsqueeze(0)).sum().backward()
        return torch.cat([p.grad.flatten() for p in net.parameters()]).double()
    JX = torch.stack([jac(x) for x in X])
    JY = torch.stack([jac(y) for y in Y])
    return (JX @ JY.T).numpy()


# ------------------------------------------------------------------------------- settings
def test_full_settings_are_the_papers() -> None:
    assert FULL["fig1"].widths == (500, 10_000) and FULL["fig1"].n_inits == 10 and FULL["fig1"].steps == 200
    assert FULL["fig1"].depth == 4 and FULL["fig1"].lr == 1.0 and FULL["fig1"].beta == 0.1
    assert FULL["fig2"].widths == (50, 1000) and FULL["fig2"].steps == 1000 and FULL["fig2"].n_inits == 10
    assert FULL["fig3"].widths == (100, 1000, 10_000) and FULL["fig3"].n_digits == 512
    assert FULL["fig3"].n_runs == 2 and FULL["fig3"].lr * FULL["fig3"].steps == 4000
    assert FULL["fig3"].depth == 5
    for key in ("fig1", "fig2", "fig3"):
        assert differences(FULL[key]) == {}


def test_default_settings_keep_the_comparisons() -> None:
    """Every default run keeps two widths a decade apart, and Figure 3 reaches the paper's time t."""
    for key in ("fig1", "fig2", "fig3"):
        widths = DEFAULT[key].widths
        assert max(widths) >= 10 * min(widths)
    assert DEFAULT["fig3"].lr * DEFAULT["fig3"].steps == FULL["fig3"].lr * FULL["fig3"].steps
    assert get_settings("fig2") is DEFAULT["fig2"] and get_settings("fig2", full=True) is FULL["fig2"]


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="n_angles must be odd"):
        Figure1Settings(n_angles=20)
    with pytest.raises(ValueError, match="widths must be >= 1"):
        Figure2Settings(widths=(0, 10))
    with pytest.raises(ValueError, match="same positive length"):
        Figure2Settings(targets=(0.1,))
    with pytest.raises(ValueError, match="lr must be > 0"):
        Figure3Settings(lr=0.0)
    with pytest.raises(ValueError, match="component must be in"):
        Figure3Settings(component=4)
    with pytest.raises(TypeError, match="n_runs must be an integer"):
        Figure3Settings(n_runs=1.5)
    with pytest.raises(ValueError, match="figure must be one of"):
        get_settings("fig4")


def test_derive_seed_is_reproducible_and_distinct() -> None:
    seeds = {derive_seed(0, 1, w, i) for w in range(3) for i in range(10)}
    assert len(seeds) == 30 and derive_seed(0, 1, 2, 3) == derive_seed(0, 1, 2, 3)
    assert derive_seed(1, 1, 2, 3) != derive_seed(0, 1, 2, 3)


# ------------------------------------------------------------------------------- Figure 1
def test_figure1_end_to_end() -> None:
    settings = Figure1Settings(widths=(10, 400), n_inits=3, steps=10, n_angles=21)
    result = fig1.compute(settings, CPU)
    gamma = result["gamma"]
    X = circle_points(gamma)
    # the limit is Theta^(4)_inf: NOTES.md's values, and the recursion written out above
    assert result["limit"][10] == pytest.approx(0.2825, abs=1e-4)
    assert result["limit"][0] == pytest.approx(0.0644, abs=1e-4)
    # (rtol: the arccos above loses about 1e-8 next to the diagonal, where MLP.kernel is exact)
    np.testing.assert_allclose(result["limit"], relu_kernels(X[10:11], X, 4, 0.1)[1][0], rtol=1e-7)
    # the first network's curve at t = 0 is its NTK, here from an explicit Jacobian
    net = nk.MLP(4, beta=0.1).network(2, 10, seed=derive_seed(0, 1, 0, 0))
    Xt = torch.tensor(X, dtype=torch.float32)
    expected = explicit_ntk(net, Xt[10:11], Xt)[0]
    np.testing.assert_allclose(result["before"][10][0], expected, rtol=1e-4, atol=1e-6)

    metrics = fig1.measure(result, settings)
    narrow, wide = metrics["n=10"], metrics["n=400"]
    spread = "spread (std across inits, mean over the circle)"
    assert wide["t=0"][spread] < narrow["t=0"][spread] / 3  # about sqrt(400 / 10) = 6.3 times smaller
    assert wide["t=0"]["relative L2 distance of the mean to the limit"] < 0.15
    assert wide["t=0"]["RMS distance of the mean to the limit, in standard errors"] < 3
    change = "relative NTK change ||Theta(t)-Theta(0)||_F/||Theta(0)||_F (mean over inits)"
    assert wide[change] < narrow[change] and wide[change] < 0.1
    # the tracker's relative change is the one of the curves recorded
    for width in settings.widths:
        assert np.all(result["changes"][width] > 0)
    verdicts = fig1.claims(metrics, settings)
    assert len(verdicts) == 4 and all(isinstance(c.holds, bool) for c in verdicts)


def test_figure1_measure_on_known_curves() -> None:
    """Spread, distance and change computed on curves made by hand."""
    settings = Figure1Settings(widths=(1, 10), n_inits=2, steps=1, n_angles=5)
    limit = np.array([1.0, 2.0, 3.0, 2.0, 1.0])
    before = {1: np.stack([limit - 0.5, limit + 0.5]), 10: np.stack([limit - 0.1, limit + 0.1])}
    after = {1: 2 * before[1], 10: before[10] * 1.01}
    result = {"gamma": np.linspace(-np.pi, np.pi, 5), "limit": limit, "before": before, "after": after,
              "changes": {1: np.array([1.0, 1.0]), 10: np.array([0.01, 0.01])},
              "losses": {1: np.array([0.1, 0.1]), 10: np.array([0.1, 0.1])}}
    metrics = fig1.measure(result, settings)
    narrow, wide = metrics["n=1"], metrics["n=10"]
    assert narrow["t=0"]["spread (std across inits, mean over the circle)"] == pytest.approx(np.sqrt(0.5))
    assert wide["t=0"]["relative L2 distance of the mean to the limit"] == pytest.approx(0.0, abs=1e-15)
    assert narrow["inflation: mean of (Theta(t)-Theta(0))/Theta(0) on the circle"] == pytest.approx(1.0)
    holds = [c.holds for c in fig1.claims(metrics, settings)]
    assert holds[0] is True and holds[2] is True and holds[3] is True


# ------------------------------------------------------------------------------- Figure 2
def test_figure2_end_to_end() -> None:
    settings = Figure2Settings(widths=(20, 200), n_inits=4, steps=200, n_angles=41)
    result = fig2.compute(settings, CPU)
    # the limit: the t -> infinity Gaussian of NOTES.md, written out here from the analytic kernels
    X = circle_points(np.array(settings.gammas), "sin_cos")
    Xs = circle_points(result["gamma"], "sin_cos")
    y = np.array(settings.targets)
    S_tr, K_tr = relu_kernels(X, X, 4, 0.1)
    S_te, K_te = relu_kernels(Xs, X, 4, 0.1)
    S_diag = np.diag(relu_kernels(Xs, Xs, 4, 0.1)[0])
    A = np.linalg.solve(K_tr, K_te.T).T
    mean = A @ y
    var = S_diag - 2 * np.sum(A * S_te, 1) + np.sum((A @ S_tr) * A, 1)
    np.testing.assert_allclose(result["mean"], mean, atol=1e-8)
    np.testing.assert_allclose(result["std"], np.sqrt(np.maximum(var, 0)), atol=1e-6)
    from scipy.stats import norm
    assert fig2.Z90 == pytest.approx(norm.ppf(0.9), abs=1e-12)

    # the trained nets fit the four points, and the wider ones fall near the limit
    metrics = fig2.measure(result, settings)
    for width in settings.widths:
        assert metrics[f"n={width}"]["largest final training loss"] < 1e-3
    wide = metrics["n=200"]
    assert wide["fraction inside P10-P90"] > 0.5
    assert wide["same, in standard errors of a mean of n_inits nets"] < 3.0
    assert 0.4 < wide["nets' RMS std / limit's RMS std"] < 2.5
    assert [c.holds for c in fig2.claims(metrics, settings)][1] is True


# ------------------------------------------------------------------------------- Figure 3
def test_figure3_end_to_end(tmp_path: Path) -> None:
    settings = Figure3Settings(widths=(25, 400), n_digits=64, n_runs=1, steps=60, lr=5.0, record_every=6)
    context = Context(device="cpu", seed=0, progress=False, data_dir=str(tmp_path / "none"), download=False)
    result = fig3.compute(settings, context)
    digits = result["digits"]
    assert digits.source == "sklearn-digits" and digits.X.shape == (64, 64)
    # kernel PCA against a direct eigendecomposition of Theta(X, X) / N
    K = relu_kernels(digits.X, digits.X, 5, 0.1)[1]
    eigenvalues, vectors = np.linalg.eigh(K / 64)
    np.testing.assert_allclose(result["eigenvalues"], eigenvalues[::-1][:3], rtol=1e-8)
    for i in range(3):  # f^(i) is the i-th eigenvector with unit p_in norm (up to its sign)
        overlap = abs(result["components"][:, i] @ vectors[:, -1 - i]) / np.sqrt(64)
        assert overlap == pytest.approx(1.0, abs=1e-8)
    assert result["lambda"] == pytest.approx(eigenvalues[-2], rel=1e-8)
    # t = 0: f_0 - f* = -0.5 f^(2) exactly: ||g_0|| = 0.5, h_0 = 0
    for width in settings.widths:
        assert result["g"][width][:, 0] == pytest.approx(0.5, abs=1e-5)
        assert result["h"][width][:, 0] == pytest.approx(0.0, abs=1e-5)
    np.testing.assert_allclose(result["times"], np.arange(0, 61, 6) * 5.0)
    np.testing.assert_allclose(result["limit"], 0.5 * np.exp(-result["lambda"] * result["times"]))
    # the wide net follows the limit closely and stays near the straight line
    metrics = fig3.measure(result, settings)
    wide, narrow = metrics["n=400"], metrics["n=25"]
    distance = "distance to the limit: max_t | ||g_t|| - limit(t) | (mean over runs)"
    assert wide[distance] < 0.12 and wide[distance] < narrow[distance]  # about 0.08 and 0.15
    assert wide["largest ||h_t|| (mean over runs)"] < narrow["largest ||h_t|| (mean over runs)"]
    assert metrics["lambda_1 / lambda_2"] > 10


def test_figure3_real_mnist(mnist_path: Path, tmp_path: Path) -> None:
    settings = Figure3Settings(widths=(10, 100), n_digits=128, n_runs=1, steps=4, record_every=2)
    context = Context(device="cpu", seed=0, progress=False, data_dir=str(mnist_path), download=False)
    out = fig3.run(settings, tmp_path, context)
    assert out.notes == [] and "MNIST test split" in out.metrics["data"]
    assert out.metrics["lambda_1 / lambda_2"] > 10  # the paper: lambda_1 far above the others
    assert (tmp_path / "fig3.png").stat().st_size > 0 and (tmp_path / "fig3.pdf").stat().st_size > 0


# --------------------------------------------------------------------------------- report
def test_report_files(tmp_path: Path) -> None:
    result = FigureResult("fig2", "Figure 2: test", Figure2Settings(widths=(5, 50)),
                          {"n=5": {"fraction": 0.75, "bad": float("nan")}}, {"curve": np.arange(3) / 3},
                          [Claim("It works.", "0.75 inside | fine", True),
                           Claim("Unknown.", "no data", None)],
                          ["fig2.png", "fig2.pdf"], ["this is a note"], 1.5)
    report, metrics_path = write_report(tmp_path, [result], {"seed": 0, "device": "cpu"})
    text = report.read_text()
    assert "![Figure 2: test](fig2.png)" in text and "[fig2.pdf](fig2.pdf)" in text
    assert "| widths | 5, 50 | 50, 1000 |" in text and "| n_inits | 10 | same |" in text
    assert "| It works. | 0.75 inside \\| fine | **yes** |" in text and "not tested" in text
    assert "> **Note.** this is a note" in text and "| n=5 / fraction | 0.75 |" in text
    metrics = json.loads(metrics_path.read_text())
    assert metrics["run"] == {"seed": 0, "device": "cpu"}
    assert metrics["fig2"]["metrics"]["n=5"] == {"fraction": 0.75, "bad": None}
    assert metrics["fig2"]["curves"]["curve"] == [0.0, 0.3333333, 0.6666667]
    assert metrics["fig2"]["differences_from_paper"]["widths"] == {"this_run": [5, 50], "paper": [50, 1000]}
    assert metrics["fig2"]["claims"][1] == {"claim": "Unknown.", "evidence": "no data", "holds": None}


def test_jsonable() -> None:
    value = jsonable({"a": torch.tensor([1.0, float("inf")]), "b": np.float32(0.1), "c": (np.int64(3), True)})
    assert value == {"a": [1.0, None], "b": 0.1, "c": [3, True]}
    json.dumps(value, allow_nan=False)


def test_reproduce_rejects_bad_arguments(tmp_path: Path) -> None:
    from ntkit.experiments import reproduce
    with pytest.raises(ValueError, match="figures must be among"):
        reproduce("fig4", tmp_path, log=None)
    with pytest.raises(ValueError, match="settings"):
        reproduce("fig1", tmp_path, settings={"fig1": Figure2Settings()}, log=None)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            reproduce("fig1", tmp_path, device="cuda", log=None)
