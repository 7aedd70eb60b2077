"""Figure 2 (Section 6.2): networks trained on 4 points of the circle vs the t -> infinity Gaussian.

For each width n and initialization, a network of depth L = 4 is trained by full-batch gradient
descent on the least-squares cost of 4 points (sin gamma_i, cos gamma_i) of the unit circle, and
its function f(sin gamma, cos gamma) is drawn over gamma in [-pi, pi]. The limit: an infinitely
wide network trained for t -> infinity is Gaussian (Section 5, docs/paper.md) with
    mean(x) = kappa_x^T Ktilde^{-1} y*,     kappa_x = Theta^(L)(X, x),  Ktilde = Theta^(L)(X, X),
    var(x)  = Sigma(x, x) - 2 kappa_x^T Ktilde^{-1} Sigma(X, x)
              + kappa_x^T Ktilde^{-1} Sigma(X, X) Ktilde^{-1} kappa_x,
computed exactly by `ntkit.dynamics.InfiniteWidthGP` (the paper approximated Theta and Sigma with a
width-10000 network). Its 10th, 50th and 90th percentiles are mean + z std with z = -1.2816, 0, 1.2816.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import circle_angles, circle_points
from ..dynamics import InfiniteWidthGP, train_network
from ..mlp import MLP
from ..progress import progress
from .common import Context, derive_seed, fmt, new_figure, save_figure, width_colors
from .report import Claim, FigureResult
from .settings import Figure2Settings

TITLE = "Figure 2: trained networks vs the t -> infinity Gaussian of the NTK"
Z90 = 1.2815515655446004  # the 90th percentile of N(0, 1)


def compute(settings: Figure2Settings, context: Context) -> dict:
    """Train every network and evaluate the limit; returns the curves (NumPy float64) and losses."""
    arch = MLP(settings.depth, "relu", beta=settings.beta)
    X_train = circle_points(np.array(settings.gammas), "sin_cos")
    y_train = np.array(settings.targets, dtype=np.float64)
    gamma = circle_angles(settings.n_angles)
    X_test = circle_points(gamma, "sin_cos")

    gp = InfiniteWidthGP(arch, X_train, y_train)
    # the slowest direction of the limit's dynamics on the data: lambda_min of Theta(X, X) / N
    lambda_min = float(np.linalg.eigvalsh(np.asarray(arch.kernel(X_train, get="ntk")) / len(y_train))[0])
    mean, std = gp.predict(X_test, t=np.inf, return_std=True)
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)

    device = torch.device(context.device)
    Xtr = torch.tensor(X_train, dtype=torch.float32, device=device)
    ytr = torch.tensor(y_train, dtype=torch.float32, device=device).unsqueeze(1)
    Xte = torch.tensor(X_test, dtype=torch.float32, device=device)
    functions, losses = {}, {}
    for w_index, width in enumerate(settings.widths):
        curves, final = [], []
        runs = progress(range(settings.n_inits), total=settings.n_inits, desc=f"fig2 width {width}",
                        enabled=context.progress)
        for init in runs:
            net = arch.network(2, width, seed=derive_seed(context.seed, 2, w_index, init), device=device)
            history = train_network(net, Xtr, ytr, lr=settings.lr, steps=settings.steps, progress=False)
            with torch.no_grad():
                curves.append(net(Xte)[:, 0].double().cpu().numpy())
            final.append(float(np.asarray(history.loss)[-1]))
        functions[width], losses[width] = np.stack(curves), np.array(final)
    return {"gamma": gamma, "mean": mean, "std": std, "functions": functions, "losses": losses,
            "train_gamma": np.array(settings.gammas), "train_y": y_train, "lambda_min": lambda_min}


def measure(result: dict, settings: Figure2Settings) -> dict:
    """Per width: the fraction of curve points inside [P10, P90], and how far the nets' mean and
    spread are from the limit's (RMS over the circle, away from the training points where std = 0)."""
    mean, std = result["mean"], result["std"]
    lower, upper = mean - Z90 * std, mean + Z90 * std
    away = std > 1e-3 * std.max()  # the band has zero width on the training points
    t_end = settings.lr * settings.steps
    metrics: dict = {"lambda_min of Theta(X, X)/N": result["lambda_min"],
                     f"exp(-lambda_min t) at t = {t_end:g} (how far from t = infinity)":
                         float(np.exp(-result["lambda_min"] * t_end))}
    for width, curves in result["functions"].items():
        inside = (curves >= lower) & (curves <= upper)
        nets_mean, nets_std = curves.mean(axis=0), curves.std(axis=0, ddof=1)
        rms_std = float(np.sqrt(np.mean(std[away] ** 2)))
        distance = float(np.sqrt(np.mean((nets_mean - mean)[away] ** 2)))
        metrics[f"n={width}"] = {
            "fraction inside P10-P90": float(inside[:, away].mean()),
            "RMS distance of the nets' mean to the limit's mean": distance,
            "same, in units of the limit's RMS std": distance / rms_std,
            "same, in standard errors of a mean of n_inits nets": distance / rms_std * np.sqrt(len(curves)),
            "nets' RMS std / limit's RMS std": float(np.sqrt(np.mean(nets_std[away] ** 2))) / rms_std,
            "largest final training loss": float(result["losses"][width].max()),
        }
    return metrics


def claims(metrics: dict, settings: Figure2Settings) -> list[Claim]:
    """Section 6.2: both widths land close to the limiting distribution, even n = 50."""
    out = []
    for width in settings.widths:
        m = metrics[f"n={width}"]
        fraction = m["fraction inside P10-P90"]
        errors = m["same, in standard errors of a mean of n_inits nets"]
        ratio = m["nets' RMS std / limit's RMS std"]
        holds = 0.6 <= fraction <= 0.95 and errors <= 3.0 and 0.5 <= ratio <= 2.0
        out.append(Claim(
            f"The network functions at n = {width} have mean and variance close to those of the limiting "
            "t -> infinity Gaussian (Section 6.2: 'even for relatively small widths (n = 50), the NTK gives "
            "a good indication of the distribution of f_theta(t) as t -> infinity').",
            f"{fmt(100 * fraction)}% of curve points inside P10-P90 (80% expected; accepted 60-95%); the "
            f"nets' mean is {fmt(errors)} standard errors from the limit's mean (accepted <= 3); their "
            f"spread is {fmt(ratio)} times the limit's (accepted 0.5-2).", holds))
    return out


def plot(result: dict, settings: Figure2Settings, out_dir: str | Path) -> list[str]:
    """The paper's plot: every trained net's f(sin gamma, cos gamma) and the limit's percentiles."""
    figure, (ax,) = new_figure()
    gamma, colors = result["gamma"], width_colors(settings.widths)
    for width, curves in result["functions"].items():
        for index, curve in enumerate(curves):
            ax.plot(gamma, curve, color=colors[width], lw=0.8, alpha=0.7,
                    label=f"n = {width}" if index == 0 else None)
    mean, std = result["mean"], result["std"]
    ax.plot(gamma, mean, color="black", lw=1.8, label=r"$n = \infty$, $P_{50}$")
    ax.plot(gamma, mean + Z90 * std, color="black", lw=1.2, ls="--",
            label=r"$n = \infty$, $\{P_{10}, P_{90}\}$")
    ax.plot(gamma, mean - Z90 * std, color="black", lw=1.2, ls="--")
    ax.scatter(result["train_gamma"], result["train_y"], color="red", zorder=5, s=25, label="training points")
    ax.set_xlabel(r"$\gamma$")
    ax.set_ylabel(r"$f_\theta(\sin\gamma, \cos\gamma)$")
    ax.set_xlim(-np.pi, np.pi)
    ax.set_title(f"L = {settings.depth}, {settings.steps} steps at lr {settings.lr:g}, "
                 f"{settings.n_inits} inits per width")
    ax.legend(fontsize=8)
    return save_figure(figure, out_dir, "fig2")


def run(settings: Figure2Settings, out_dir: str | Path, context: Context) -> FigureResult:
    """Compute, measure, plot and judge Figure 2."""
    result = compute(settings, context)
    metrics = measure(result, settings)
    files = plot(result, settings, out_dir)
    curves = {"gamma": result["gamma"], "limit_mean": result["mean"], "limit_std": result["std"],
              "limit_p10": result["mean"] - Z90 * result["std"],
              "limit_p90": result["mean"] + Z90 * result["std"],
              **{f"functions_n={w}": c for w, c in result["functions"].items()}}
    return FigureResult("fig2", TITLE, settings, metrics, curves, claims(metrics, settings), files)


__all__ = ["TITLE", "claims", "compute", "measure", "plot", "run"]
