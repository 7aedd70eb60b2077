"""Averages over random initializations: finite networks against their infinite-width limit.

Theorem 1: as the widths grow, the empirical NTK of a random network converges to Theta^(L)
(x) Id; Proposition 1: its outputs become a Gaussian process with covariance Sigma^(L). These
estimate both at a finite width by averaging over `n_samples` networks `arch.network(...,
seed=seed + i)`, and return the mean with its standard error (sample std / sqrt(n_samples)).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._checks import as_tensor, check_positive_int, to_output
from ..progress import progress as progress_bar
from .api import empirical_ntk
from .common import make_problem
from .structured import NotStructured, forward, parse

Array = torch.Tensor | np.ndarray


def _inputs(X: Array, Y: Array | None) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """X (N, d), (N, C, L) or (N, C, H, W) as a float tensor, and Y with the same shape per example."""
    Xt, numpy_in = as_tensor(X, "X", ndim=(2, 3, 4))
    if Xt.dtype not in (torch.float32, torch.float64):
        Xt = Xt.float()
    Yt = None if Y is None else as_tensor(Y, "Y", ndim=(2, 3, 4), dtype=Xt.dtype, device=Xt.device)[0]
    if Yt is not None and Yt.shape[1:] != Xt.shape[1:]:
        raise ValueError(f"X and Y must have the same shape per example (the same number of features), got "
                         f"{tuple(Xt.shape[1:])} and {tuple(Yt.shape[1:])}")
    return Xt, Yt, numpy_in


def _network(arch: Any, X: torch.Tensor, width: Any, seed: int, out_features: int = 1) -> torch.nn.Module:
    """A random finite network of `arch` for inputs like X: `arch.network(in_shape=...)` (any ntkit architecture),
    or `arch.network(in_features=...)` for an architecture that takes flat inputs only (MLP)."""
    parameters = inspect.signature(arch.network).parameters
    if "in_shape" in parameters:
        return arch.network(in_shape=tuple(X.shape[1:]), width=width, out_features=out_features, seed=seed,
                            dtype=X.dtype, device=X.device)
    if X.ndim != 2:
        raise ValueError(f"{type(arch).__name__} takes flat inputs (N, d); got X of shape {tuple(X.shape)}")
    return arch.network(in_features=X.shape[1], width=width, out_features=out_features, seed=seed, dtype=X.dtype,
                        device=X.device)


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
        raise TypeError(f"arch must describe an architecture with a .network(in_shape, width, seed=...) "
                        f"method, such as ntkit.MLP(...) or ntkit.Sequential(...); got {type(arch).__name__}")
    if width is None:
        raise ValueError("width is required: the hidden width of the sampled networks")
    n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
    check_positive_int(seed, "seed", minimum=0)
    return n_samples


def monte_carlo_ntk(arch, X: Array, Y: Array | None = None, *, width: int | list[int], n_samples: int,
                    seed: int = 0, method: str = "auto",
                    progress: bool | None = None) -> tuple[Array, Array]:
    """Mean and standard error of the empirical NTK over `n_samples` random networks of `arch`.

    Network i is `arch.network(in_shape=X.shape[1:], width=width, seed=seed + i)` in X's dtype (one
    output; `in_features=d` for an MLP); its NTK is `empirical_ntk(net, X, Y, mode="trace")`. Theorem 1: the mean
    tends to `arch.kernel(X, Y, get="ntk")` and each network's NTK lies within O(1/sqrt(width)) of it.

    Args:
        arch: any ntkit architecture, e.g. `ntkit.MLP(depth=4)` or `ntkit.Sequential(nk.Conv2d(3), ...)`.
            X: (N, d), (N, C, L) or (N, C, H, W); Y: (M, same shape) or None.
        width: hidden width (or list of hidden widths) of the networks. n_samples: >= 2.
    Returns: (mean, stderr), each (N, M) float64; NumPy when X is NumPy.
    """
    n_samples = _check(arch, width, n_samples, seed)
    Xt, Yt, numpy_in = _inputs(X, Y)

    def sample(i: int) -> torch.Tensor:
        net = _network(arch, Xt, width, seed + i)
        return empirical_ntk(net, Xt, Yt, mode="trace", method=method, progress=False)

    mean, stderr = _average(sample, n_samples, "Monte Carlo NTK", progress)
    return to_output(mean, numpy_in), to_output(stderr, numpy_in)


def monte_carlo_nngp(arch, X: Array, Y: Array | None = None, *, width: int | list[int], n_samples: int,
                     seed: int = 0, outputs: int = 64, progress: bool | None = None) -> tuple[Array, Array]:
    """Mean and standard error of the empirical NNGP kernel over `n_samples` random networks.

    For an MLP (attributes W_std, b_std; fully-connected networks), the covariance of each network's output given
    its last hidden layer (Proposition 1 at finite width): W_std^2 alpha^(L-1)(x).alpha^(L-1)(y) / n_{L-1} +
    b_std^2. For any other architecture, f(x).f(y) / k averaged over the k = `outputs` independent outputs of
    `arch.network(in_shape=..., out_features=k)`. Both are unbiased estimates of E[f(x) f(y)] whose spread shrinks
    with the width; the mean tends to `arch.kernel(X, Y, get="nngp")` = Sigma.

    X: (N, d), (N, C, L) or (N, C, H, W); Y: (M, same shape) or None.
    Returns: (mean, stderr), each (N, M) float64; NumPy when X is NumPy.
    """
    n_samples = _check(arch, width, n_samples, seed)
    Xt, Yt, numpy_in = _inputs(X, Y)
    if not (hasattr(arch, "W_std") and hasattr(arch, "b_std")):   # any architecture: from its outputs
        outputs = check_positive_int(outputs, "outputs")

        def from_outputs(i: int) -> torch.Tensor:
            net = _network(arch, Xt, width, seed + i, out_features=outputs)
            with torch.no_grad():
                fx = net(Xt)
                fy = fx if Yt is None else net(Yt)
            return fx @ fy.T / outputs

        mean, stderr = _average(from_outputs, n_samples, "Monte Carlo NNGP", progress)
        return to_output(mean, numpy_in), to_output(stderr, numpy_in)
    w_var, b_var = float(arch.W_std) ** 2, float(arch.b_std) ** 2

    def sample(i: int) -> torch.Tensor:
        net = _network(arch, Xt, width, seed + i)
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

