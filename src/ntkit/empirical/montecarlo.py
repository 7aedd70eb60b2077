"""Averages over random initializations: finite networks against their infinite-width limit.

Theorem 1: as the widths grow, the empirical NTK of a random network converges to Theta^(L)
(x) Id; Proposition 1: its outputs become a Gaussian process with covariance Sigma^(L). These
estimate both at a finite width by averaging over `n_samples` networks `arch.network(...,
seed=seed + i)`, and return the mean with its standard error (sample std / sqrt(n_samples)).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .._checks import as_matrix, check_positive_int, to_output
from ..progress import progress as progress_bar
from .api import empirical_ntk
from .common import make_problem
from .structured import NotStructured, forward, parse

Array = torch.Tensor | np.ndarray


def _inputs(X: Array, Y: Array | None) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    Xt, numpy_in = as_matrix(X, "X")
    if Xt.dtype not in (torch.float32, torch.float64):
        Xt = Xt.float()
    Yt = None if Y is None else as_matrix(Y, "Y", dtype=Xt.dtype, device=Xt.device)[0]
    if Yt is not None and Yt.shape[1] != Xt.shape[1]:
        raise ValueError(f"X and Y must have the same number of features, got {Xt.shape[1]} and {Yt.shape[1]}")
    return Xt, Yt, numpy_in


def _average(sample_fn: Callable[[int], torch.Tensor], n_samples: int, desc: str,
             progress: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error of n_samples draws, accumulated in one pass (Welford), in float64."""
    mean = m2 = None
    for i in progress_bar(range(n_samples), total=n_samples, desc=desc, enabled=progress):
        value = sample_fn(i).to(torch.float64)
        if mean is None:
            mean, m2 = value.clone(), torch.zeros_like(value)
        else:
            delta = value - mean
            mean += delta / (i + 1)
            m2 += delta * (value - mean)
    stderr = torch.sqrt(m2 / (n_samples - 1) / n_samples)
    return mean, stderr


def _check(arch: object, width: object, n_samples: int, seed: int) -> int:
    if not callable(getattr(arch, "network", None)):
        raise TypeError(f"arch must describe an architecture with a .network(in_features, width, seed=...) "
                        f"method, such as ntkit.MLP(...); got {type(arch).__name__}")
    if width is None:
        raise ValueError("width is required: the hidden width of the sampled networks")
    n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
    check_positive_int(seed, "seed", minimum=0)
    return n_samples


def monte_carlo_ntk(arch, X: Array, Y: Array | None = None, *, width: int | list[int], n_samples: int,
                    seed: int = 0, method: str = "auto",
                    progress: bool | None = None) -> tuple[Array, Array]:
    """Mean and standard error of the empirical NTK over `n_samples` random networks of `arch`.

    Network i is `arch.network(in_features=d, width=width, seed=seed + i)` in X's dtype (one
    output); its NTK is `empirical_ntk(net, X, Y, mode="trace")`. Theorem 1: the mean tends to
    `arch.kernel(X, Y, get="ntk")` and each network's NTK lies within O(1/sqrt(width)) of it.

    Args:
        arch: an architecture, e.g. `ntkit.MLP(depth=4)`. X: (N, d), Y: (M, d) or None.
        width: hidden width (or list of hidden widths) of the networks. n_samples: >= 2.
    Returns: (mean, stderr), each (N, M) float64; NumPy when X is NumPy.
    """
    n_samples = _check(arch, width, n_samples, seed)
    Xt, Yt, numpy_in = _inputs(X, Y)

    def sample(i: int) -> torch.Tensor:
        net = arch.network(in_features=Xt.shape[1], width=width, seed=seed + i, dtype=Xt.dtype,
                           device=Xt.device)
        return empirical_ntk(net, Xt, Yt, mode="trace", method=method, progress=False)

    mean, stderr = _average(sample, n_samples, "Monte Carlo NTK", progress)
    return to_output(mean, numpy_in), to_output(stderr, numpy_in)


def monte_carlo_nngp(arch, X: Array, Y: Array | None = None, *, width: int | list[int], n_samples: int,
                     seed: int = 0, progress: bool | None = None) -> tuple[Array, Array]:
    """Mean and standard error of the empirical NNGP kernel over `n_samples` random networks.

    For each network, the covariance of its output given its last hidden layer (Proposition 1
    at finite width):  W_std^2 alpha^(L-1)(x).alpha^(L-1)(y) / n_{L-1} + b_std^2,  an unbiased
    estimate of E[f(x) f(y)] whose spread shrinks like 1/sqrt(width); the mean tends to
    `arch.kernel(X, Y, get="nngp")` = Sigma^(L). Needs an `ntkit.MLP`-like arch (attributes
    W_std, b_std) whose networks are fully-connected stacks.

    Returns: (mean, stderr), each (N, M) float64; NumPy when X is NumPy.
    """
    n_samples = _check(arch, width, n_samples, seed)
    if not (hasattr(arch, "W_std") and hasattr(arch, "b_std")):
        raise TypeError("arch must have W_std and b_std (an ntkit.MLP): the NNGP kernel needs the initial "
                        f"variances; got {type(arch).__name__}")
    Xt, Yt, numpy_in = _inputs(X, Y)
    w_var, b_var = float(arch.W_std) ** 2, float(arch.b_std) ** 2

    def sample(i: int) -> torch.Tensor:
        net = arch.network(in_features=Xt.shape[1], width=width, seed=seed + i, dtype=Xt.dtype,
                           device=Xt.device)
        problem, _ = make_problem(net, Xt, Yt, "trace", None)
        try:
            stack = parse(problem)
        except NotStructured as exc:
            raise TypeError(f"monte_carlo_nngp needs fully-connected networks: {exc}") from None
        last_x = forward(stack, Xt)[0][-1]  # alpha^(L-1): the input of the last layer
        last_y = last_x if Yt is None else forward(stack, Yt)[0][-1]
        return w_var * (last_x @ last_y.T) / last_x.shape[1] + b_var

    mean, stderr = _average(sample, n_samples, "Monte Carlo NNGP", progress)
    return to_output(mean, numpy_in), to_output(stderr, numpy_in)

