"""Figure 1 (Section 6.1): the empirical NTK converges to a fixed limit as the width grows.

For each width n and initialization, a network of depth L = 4 (n_0 = 2, ReLU, beta = 0.1) gives
its empirical NTK Theta(x0, x) (`ntkit.empirical_ntk`, structured path, via `NTKTracker`) for
x0 = (1, 0) and x = (cos gamma, sin gamma) on the unit circle, at t = 0 and again after `steps`
steps of gradient descent at learning rate `lr` (t = lr * steps) on the least-squares cost of
f*(x) = x1 x2, a fresh batch of N(0, I_2) inputs each step (the authors' script). The limit is
the analytic Theta^(4)_inf (Theorem 1), `MLP.kernel`. Theorem 2: the NTK stays constant in
training as n -> infinity; at finite n it moves ("inflates"), less for the wider net.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import circle_angles, circle_points
from ..dynamics import train_network
from ..empirical import NTKTracker
from ..mlp import MLP
from ..progress import progress
from .common import Context, derive_seed, fmt, listing, new_figure, save_figure
from .report import Claim, FigureResult
from .settings import Figure1Settings

TITLE = "Figure 1: convergence of the NTK to a fixed limit, for two widths and two times"


def target(x: torch.Tensor) -> torch.Tensor:
    """f*(x) = x1 x2, as a column (B, 1)."""
    return (x[:, 0] * x[:, 1]).unsqueeze(1)


def compute(settings: Figure1Settings, context: Context) -> dict:
    """Theta(x0, x) on the circle for every width and initialization at t = 0 and t = lr * steps,
    the relative change of the NTK on the whole circle, and the analytic limit."""
    arch = MLP(settings.depth, "relu", beta=settings.beta)
    gamma = circle_angles(settings.n_angles)
    X = circle_points(gamma, "cos_sin")
    center = settings.n_angles // 2  # gamma = 0: x0 = (1, 0)
    limit = np.asarray(arch.kernel(X[center:center + 1], X, get="ntk"))[0]  # float64, exact

    device = torch.device(context.device)
    X_probe = torch.tensor(X, dtype=torch.float32, device=device)
    before, after, changes, losses = {}, {}, {}, {}
    for w_index, width in enumerate(settings.widths):
        rows0, rows1, change, loss = [], [], [], []
        runs = progress(range(settings.n_inits), total=settings.n_inits, desc=f"fig1 width {width}",
                        enabled=context.progress)
        for init in runs:
            net = arch.network(2, width, seed=derive_seed(context.seed, 1, w_index, init), device=device)
            data = torch.Generator(device=device).manual_seed(derive_seed(context.seed, 1, w_index, init, 1))
            tracker = NTKTracker(net, X_probe, mode="trace", method="structured")
            tracker.record(0)
            last_loss = np.nan
            steps = progress(range(settings.steps), total=settings.steps, desc=f"fig1 width {width} training",
                             enabled=context.progress, minimum=50)
            for _ in steps:  # a fresh batch each step (the authors' script)
                x = torch.randn(settings.batch_size, 2, generator=data, device=device)
                history = train_network(net, x, target(x), lr=settings.lr, steps=1, progress=False)
                last_loss = float(np.asarray(history.loss)[0])
            tracker.record(settings.steps)
            rows0.append(tracker.kernels[0][center].double().cpu().numpy())
            rows1.append(tracker.kernels[-1][center].double().cpu().numpy())
            change.append(float(tracker.relative_change()[-1]))
            loss.append(last_loss)
        before[width], after[width] = np.stack(rows0), np.stack(rows1)
        changes[width], losses[width] = np.array(change), np.array(loss)
    return {"gamma": gamma, "limit": limit, "before": before, "after": after, "changes": changes,
            "losses": losses}


def _roughness(curves: np.ndarray, limit: np.ndarray) -> float:
    """RMS over gamma of the second difference of Theta - Theta_inf, averaged over curves: how jagged
    the curves are around the (smooth away from gamma = 0) limit."""
    return float(np.mean(np.sqrt(np.mean(np.diff(curves - limit, n=2, axis=1) ** 2, axis=1))))


def measure(result: dict, settings: Figure1Settings) -> dict:
    """Per width and time: spread across initializations, distance of the mean to the limit,
    roughness; per width: the relative change of the NTK and its signed "inflation"."""
    limit = result["limit"]
    scale = float(np.mean(limit))
    t_end = settings.lr * settings.steps
    metrics: dict = {"limit Theta(x0, x0)": float(limit[len(limit) // 2]),
                     "limit mean over the circle": scale}
    for width in settings.widths:
        entry = {}
        for label, curves in (("t=0", result["before"][width]), (f"t={t_end:g}", result["after"][width])):
            mean, stderr = curves.mean(axis=0), curves.std(axis=0, ddof=1) / np.sqrt(len(curves))
            entry[label] = {
                "spread (std across inits, mean over the circle)": float(np.mean(curves.std(axis=0, ddof=1))),
                "relative spread (over the limit's mean)": float(np.mean(curves.std(axis=0, ddof=1))) / scale,
                "relative L2 distance of the mean to the limit": float(np.linalg.norm(mean - limit)
                                                                       / np.linalg.norm(limit)),
                "RMS distance of the mean to the limit, in standard errors": float(
                    np.sqrt(np.mean(((mean - limit) / stderr) ** 2))),
                "roughness (RMS second difference of Theta - limit)": _roughness(curves, limit),
            }
        before, after = result["before"][width], result["after"][width]
        inflation = np.mean(after - before, axis=1) / np.mean(before, axis=1)
        entry["relative NTK change ||Theta(t)-Theta(0)||_F/||Theta(0)||_F (mean over inits)"] = \
            float(result["changes"][width].mean())
        entry["relative NTK change, std over inits"] = float(result["changes"][width].std(ddof=1)) \
            if len(result["changes"][width]) > 1 else 0.0
        entry["inflation: mean of (Theta(t)-Theta(0))/Theta(0) on the circle"] = float(inflation.mean())
        entry["cost on the last fresh batch (mean over inits)"] = float(np.mean(result["losses"][width]))
        metrics[f"n={width}"] = entry
    return metrics


def claims(metrics: dict, settings: Figure1Settings) -> list[Claim]:
    """Section 6.1's findings, each checked on the narrowest against the widest width."""
    narrow, wide = min(settings.widths), max(settings.widths)
    t_end = f"t={settings.lr * settings.steps:g}"
    m_n, m_w = metrics[f"n={narrow}"], metrics[f"n={wide}"]
    key_s = "spread (std across inits, mean over the circle)"
    key_d = "relative L2 distance of the mean to the limit"
    key_z = "RMS distance of the mean to the limit, in standard errors"
    key_r = "roughness (RMS second difference of Theta - limit)"
    key_c = "relative NTK change ||Theta(t)-Theta(0)||_F/||Theta(0)||_F (mean over inits)"
    key_i = "inflation: mean of (Theta(t)-Theta(0))/Theta(0) on the circle"
    s_n, s_w = m_n["t=0"][key_s], m_w["t=0"][key_s]
    expected = np.sqrt(wide / narrow)
    distances = [metrics[f"n={w}"]["t=0"][key_d] for w in settings.widths]
    errors = [metrics[f"n={w}"]["t=0"][key_z] for w in settings.widths]
    c_n, c_w = m_n[key_c], m_w[key_c]
    return [
        Claim("For the wider network, the NTK shows less variance (across initializations).",
              f"spread at t=0: {fmt(s_n)} (n={narrow}) vs {fmt(s_w)} (n={wide}), ratio {fmt(s_n / s_w)} "
              f"(Theorem 1's 1/sqrt(n) rate predicts {fmt(expected)}); at {t_end}: "
              f"{fmt(m_n[t_end][key_s])} vs {fmt(m_w[t_end][key_s])}.",
              s_w < s_n and m_w[t_end][key_s] < m_n[t_end][key_s]),
        Claim("The wider network's NTK is smoother.",
              f"roughness (RMS second difference of Theta - Theta_inf along gamma) at t=0: {fmt(m_n['t=0'][key_r])} "
              f"(n={narrow}) vs {fmt(m_w['t=0'][key_r])} (n={wide}).",
              m_w["t=0"][key_r] < m_n["t=0"][key_r]),
        Claim("The expectation of the NTK is very close for both widths (and to the limit Theta_inf).",
              f"at t=0 the mean over inits is, in RMS over the circle, "
              f"{listing(settings.widths, errors, ' standard errors')} from the limit (accepted: <= 3 for "
              f"every width, i.e. no difference this many inits can detect); relative L2 distance "
              f"{listing(settings.widths, distances)}.",
              all(z <= 3.0 for z in errors)),
        Claim("After training the NTK 'inflates'; much less for the wider network, whose NTK stays "
              "almost fixed.",
              f"relative change ||Theta({t_end[2:]})-Theta(0)||_F/||Theta(0)||_F: {fmt(c_n)} (n={narrow}) vs "
              f"{fmt(c_w)} (n={wide}), ratio {fmt(c_n / c_w)}; signed inflation {fmt(m_n[key_i])} vs "
              f"{fmt(m_w[key_i])}.",
              c_w < c_n and m_n[key_i] > 0),
    ]


def plot(result: dict, settings: Figure1Settings, out_dir: str | Path) -> list[str]:
    """The paper's plot: Theta(x0, x) against gamma, every init, both widths and both times, and the limit."""
    figure, (ax,) = new_figure()
    gamma, t_end = result["gamma"], settings.lr * settings.steps
    palette = iter(["tab:orange", "tab:red", "tab:cyan", "tab:blue", "tab:olive", "tab:green", "tab:pink",
                    "tab:purple"])
    for width in settings.widths:
        for label, curves in (("t = 0", result["before"][width]), (f"t = {t_end:g}", result["after"][width])):
            color = next(palette, "gray")
            for index, curve in enumerate(curves):
                ax.plot(gamma, curve, color=color, lw=0.7, alpha=0.6,
                        label=f"n = {width}, {label}" if index == 0 else None)
    ax.plot(gamma, result["limit"], color="black", lw=2.0, label=r"$n = \infty$ ($\Theta^{(4)}_\infty$)")
    ax.set_xlabel(r"$\gamma$")
    ax.set_ylabel(r"$\Theta^{(4)}(x_0, x)$,  $x_0 = (1, 0)$, $x = (\cos\gamma, \sin\gamma)$")
    ax.set_xlim(-np.pi, np.pi)
    ax.set_title(f"L = {settings.depth}, {settings.n_inits} inits per width")
    ax.legend(fontsize=8)
    return save_figure(figure, out_dir, "fig1")


def run(settings: Figure1Settings, out_dir: str | Path, context: Context) -> FigureResult:
    """Compute, measure, plot and judge Figure 1."""
    result = compute(settings, context)
    metrics = measure(result, settings)
    files = plot(result, settings, out_dir)
    curves = {"gamma": result["gamma"], "limit": result["limit"],
              **{f"theta_n={w}_t=0": c for w, c in result["before"].items()},
              **{f"theta_n={w}_t={settings.lr * settings.steps:g}": c for w, c in result["after"].items()},
              **{f"relative_change_n={w}": c for w, c in result["changes"].items()}}
    return FigureResult("fig1", TITLE, settings, metrics, curves, claims(metrics, settings), files)


__all__ = ["TITLE", "claims", "compute", "measure", "plot", "run", "target"]
