"""Figure 3 (Section 6.3): on MNIST, networks converge along a kernel principal component.

A batch of N digits (pixels in [0, 1]) and the limiting NTK Theta^(L)_inf on it give the operator
Pi f(x) = (1/N) sum_i Theta(x, x_i) f(x_i); its eigenfunctions on the data are the (non-centered)
kernel principal components f^(i), unit p_in-norm, with eigenvalues lambda_i of Theta(X, X) / N
(`ntkit.dynamics.kernel_pca`). Each network is trained by gradient descent on the least-squares
cost with target f* = f_theta(0) + 0.5 f^(2). In the limit (Section 5) f_t - f* = -0.5 e^{-lambda_2 t} f^(2):
its part along f^(2) has ||g_t||_{p_in} = 0.5 exp(-lambda_2 t) and the orthogonal part h_t stays 0.
At finite width h_t moves off zero, less for wider nets (`ntkit.dynamics.decompose`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import load_digits
from ..dynamics import decompose, kernel_pca, train_network
from ..mlp import MLP
from .common import Context, derive_seed, fmt, listing, new_figure, save_figure, width_colors
from .report import Claim, FigureResult
from .settings import Figure3Settings

TITLE = "Figure 3: convergence along the 2nd kernel principal component (MNIST)"


def compute(settings: Figure3Settings, context: Context) -> dict:
    """Kernel PCA of the limiting NTK on the digits, then ||g_t|| and ||h_t|| of every trained net."""
    digits = load_digits(settings.n_digits, seed=derive_seed(context.seed, 3), split=settings.split,
                         data_dir=context.data_dir, download=context.download, progress_bar=context.progress)
    arch = MLP(settings.depth, "relu", beta=settings.beta)
    K = arch.kernel(digits.X, get="ntk", progress=context.progress)  # Theta^(L)_inf(X, X), float64
    pca = kernel_pca(K, settings.n_components)
    eigenvalues = np.asarray(pca.eigenvalues, dtype=np.float64)
    components = np.asarray(pca.components, dtype=np.float64)  # (N, k), unit p_in norm
    direction = components[:, settings.component - 1]
    lam = float(eigenvalues[settings.component - 1])

    device = torch.device(context.device)
    X = torch.tensor(digits.X, dtype=torch.float32, device=device)
    g_norms, h_norms, times = {}, {}, None
    for w_index, width in enumerate(settings.widths):
        g_runs, h_runs = [], []
        for run in range(settings.n_runs):
            seed = derive_seed(context.seed, 3, w_index, run)
            net = arch.network(X.shape[1], width, seed=seed, device=device)
            with torch.no_grad():
                f0 = net(X)[:, 0].double().cpu().numpy()
            f_star = f0 + settings.amplitude * direction  # the paper's target f* = f_theta(0) + 0.5 f^(2)
            y = torch.tensor(f_star, dtype=torch.float32, device=device).unsqueeze(1)
            history = train_network(net, X, y, lr=settings.lr, steps=settings.steps,
                                    record_every=settings.record_every, progress=context.progress)
            outputs = history.train_outputs.double().cpu().numpy().reshape(len(history.times), -1)  # (R, N)
            g, h = decompose(outputs, f_star, direction)
            g_runs.append(np.asarray(g, dtype=np.float64))
            h_runs.append(np.asarray(h, dtype=np.float64))
            times = np.asarray(history.times, dtype=np.float64)
        g_norms[width], h_norms[width] = np.stack(g_runs), np.stack(h_runs)
    return {"digits": digits, "eigenvalues": eigenvalues, "components": components, "lambda": lam,
            "times": times, "g": g_norms, "h": h_norms,
            "limit": settings.amplitude * np.exp(-lam * times)}


def measure(result: dict, settings: Figure3Settings) -> dict:
    """lambda_1..k, how constant f^(1) is, and per width: the largest ||h_t|| (deviation from the
    straight line), the largest | ||g_t|| - A exp(-lambda t) | (distance to the limit, A = amplitude), and
    the time at which ||g_t|| first falls below A/e (the limit's: 1/lambda)."""
    first = result["components"][:, 0]
    metrics: dict = {f"lambda_{i + 1}": float(v) for i, v in enumerate(result["eigenvalues"])}
    metrics["lambda_1 / lambda_2"] = float(result["eigenvalues"][0] / result["eigenvalues"][1])
    metrics["f^(1) constancy: |mean f^(1)| / ||f^(1)||_p_in"] = \
        float(abs(first.mean()) / np.sqrt(np.mean(first ** 2)))
    metrics["data"] = result["digits"].note
    times, limit = result["times"], result["limit"]
    metrics["limit: time for ||g_t|| to fall by a factor e (1/lambda)"] = 1.0 / result["lambda"]
    steps = np.rint(times / settings.lr)  # discrete gradient descent in the limit: (1 - lr lambda)^s
    discrete = settings.amplitude * (1 - settings.lr * result["lambda"]) ** steps
    metrics["limit: largest gap between its discrete steps A (1 - lr lambda)^s and A exp(-lambda t)"] = \
        float(np.max(np.abs(discrete - limit)))
    for width in settings.widths:
        g, h = result["g"][width], result["h"][width]
        crossing = [_first_below(times, run, settings.amplitude / np.e) for run in g]
        metrics[f"n={width}"] = {
            "largest ||h_t|| (mean over runs)": float(h.max(axis=1).mean()),
            "largest ||h_t|| (max over runs)": float(h.max()),
            "distance to the limit: max_t | ||g_t|| - limit(t) | (mean over runs)": float(
                np.abs(g - limit).max(axis=1).mean()),
            "time for ||g_t|| to fall by a factor e (mean over runs)": float(np.mean(crossing)),
            "||g_t|| at the last time (mean over runs)": float(g[:, -1].mean()),
        }
    return metrics


def _first_below(times: np.ndarray, values: np.ndarray, level: float) -> float:
    """The first time `values` reaches `level`, linearly interpolated; inf if never."""
    below = np.flatnonzero(values <= level)
    if below.size == 0:
        return float("inf")
    i = int(below[0])
    if i == 0:
        return float(times[0])
    t0, t1, v0, v1 = times[i - 1], times[i], values[i - 1], values[i]
    return float(t0 + (level - v0) * (t1 - t0) / (v1 - v0))


def claims(metrics: dict, settings: Figure3Settings) -> list[Claim]:
    """Section 6.3's findings, compared across the widths in increasing order."""
    widths = sorted(settings.widths)
    key_h, key_g = "largest ||h_t|| (mean over runs)", \
        "distance to the limit: max_t | ||g_t|| - limit(t) | (mean over runs)"
    key_t = "time for ||g_t|| to fall by a factor e (mean over runs)"
    hs = [metrics[f"n={w}"][key_h] for w in widths]
    gs = [metrics[f"n={w}"][key_g] for w in widths]
    ts = [metrics[f"n={w}"][key_t] for w in widths]
    ratio = metrics["lambda_1 / lambda_2"]

    def decreasing(values: list[float]) -> bool:
        return all(b < a for a, b in zip(values, values[1:], strict=False))

    return [
        Claim("The first kernel principal component (nearly constant) has an eigenvalue far above lambda_2 "
              "and lambda_3.",
              f"lambda_1 = {fmt(metrics['lambda_1'])}, lambda_2 = {fmt(metrics['lambda_2'])}, lambda_3 = "
              f"{fmt(metrics['lambda_3'])}; lambda_1/lambda_2 = {fmt(ratio)} (accepted: > 10).",
              ratio > 10 and metrics["lambda_2"] >= metrics["lambda_3"]),
        Claim("The wider the network, the less it deviates from the straight line (||h_t|| smaller).",
              f"largest ||h_t||: {listing(widths, hs)}.", decreasing(hs)),
        Claim(f"As the width grows, ||g_t|| converges to the limit {settings.amplitude:g} exp(-lambda_2 t).",
              f"largest distance to the limit: {listing(widths, gs)}.", decreasing(gs)),
        Claim("Smaller networks appear to converge faster than wider ones (the NTK inflates in training).",
              f"time for ||g_t|| to fall to {settings.amplitude:g}/e: {listing(widths, ts)}; the limit's: "
              f"{fmt(1 / metrics['lambda_2'])}.",
              all(b >= a for a, b in zip(ts, ts[1:], strict=False)) and ts[0] < ts[-1]),
    ]


def plot(result: dict, settings: Figure3Settings, out_dir: str | Path) -> list[str]:
    """Panels (a) the digits at (f^(2), f^(3)), (b) ||h_t|| and (c) ||g_t|| against t, with the limit."""
    figure, (ax_a, ax_b, ax_c) = new_figure(3, width=5.0, height=4.4)
    comps, labels = result["components"], result["digits"].labels
    second, third = comps[:, 1], comps[:, min(2, comps.shape[1] - 1)]
    scatter = ax_a.scatter(second, third, c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=8)
    figure.colorbar(scatter, ax=ax_a, ticks=range(10), label="digit")
    ax_a.set_xlabel(r"$f^{(2)}(x)$")
    ax_a.set_ylabel(r"$f^{(3)}(x)$")
    ax_a.set_title("(a) 2nd and 3rd principal components")
    times, colors = result["times"], width_colors(settings.widths)
    styles = ["-", "--", ":", "-."]
    for width in settings.widths:
        for run in range(settings.n_runs):
            label = f"n = {width}" if run == 0 else None
            style = {"color": colors[width], "ls": styles[run % 4], "lw": 1.2, "label": label}
            ax_b.plot(times, result["h"][width][run], **style)
            ax_c.plot(times, result["g"][width][run], **style)
    ax_b.set_xlabel("t")
    ax_b.set_ylabel(r"$\|h_t\|_{p^{in}}$")
    ax_b.set_title("(b) deviation from the straight line")
    ax_b.legend(fontsize=8)
    ax_c.plot(times, result["limit"], color="tab:blue", lw=2.0,
              label=rf"$n = \infty$: ${settings.amplitude:g}\, e^{{-\lambda_{settings.component} t}}$")
    ax_c.set_xlabel("t")
    ax_c.set_ylabel(r"$\|g_t\|_{p^{in}}$")
    ax_c.set_title(f"(c) convergence along component {settings.component}")
    ax_c.legend(fontsize=8)
    return save_figure(figure, out_dir, "fig3")


def run(settings: Figure3Settings, out_dir: str | Path, context: Context) -> FigureResult:
    """Compute, measure, plot and judge Figure 3."""
    result = compute(settings, context)
    metrics = measure(result, settings)
    files = plot(result, settings, out_dir)
    comps = result["components"]
    curves = {"times": result["times"], "limit_g": result["limit"], "labels": result["digits"].labels,
              **{f"f^({i + 1})": comps[:, i] for i in range(comps.shape[1])},
              **{f"g_n={w}": v for w, v in result["g"].items()},
              **{f"h_n={w}": v for w, v in result["h"].items()}}
    notes = [] if result["digits"].is_mnist else [result["digits"].note]
    return FigureResult("fig3", TITLE, settings, metrics, curves, claims(metrics, settings), files, notes)


__all__ = ["TITLE", "claims", "compute", "measure", "plot", "run"]
