"""Kernel gradient descent for any differentiable cost, by numerical integration (Section 3).

For a cost C(f) = (1/N) sum_i l(f(x_i), y_i) the functional derivative at the data is
d|_f(x_i) = dl/df(x_i), and kernel gradient descent is (Section 3)

    d/dt f_t(x) = -(1/N) sum_j K(x, x_j) d|_{f_t}(x_j).

The training outputs follow a closed ODE, integrated with SciPy's `solve_ivp`. New points do not
feed back: f_t(x) = f_0(x) - (1/N) K(x, X) int_0^t d|_{f_s}(X) ds, so the integral of d is
integrated along (N k extra unknowns) and any number of test points costs one product at the end.
With l = (1/2) ||f - y||^2 this is the least-squares dynamics of `LeastSquares`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .least_squares import check_cross_gram, check_targets
from .spectrum import check_gram
from .time import check_times

Array = torch.Tensor | np.ndarray
LOSSES = ("mse", "cross_entropy", "logistic")


@dataclass(frozen=True)
class FlowResult:
    """Outputs of `gradient_flow` at the requested times.

    Attributes:
        times: (T,) the times, as requested.
        train: (T, N, k) f_t(X). test: (T, M, k) f_t(X*), or None without K_test_train.
        loss: (T,) the cost C(f_t) = (1/N) sum_i l(f_t(x_i), y_i).
    """

    times: np.ndarray
    train: Array
    test: Array | None
    loss: np.ndarray


def _loss_and_grad(loss: str | Callable, y: np.ndarray) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """l summed over the points and its gradient dl/df, for outputs f of shape (N, k)."""
    if loss == "mse":
        return lambda f: (0.5 * float(((f - y) ** 2).sum()), f - y)
    if loss == "cross_entropy":            # softmax cross-entropy, y one-hot or class probabilities (N, k)
        def ce(f: np.ndarray) -> tuple[float, np.ndarray]:
            z = f - f.max(1, keepdims=True)
            log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
            return float(-(y * log_p).sum()), np.exp(log_p) - y
        return ce
    if loss == "logistic":                 # binary cross-entropy on one logit, y in [0, 1] (N, 1)
        def logistic(f: np.ndarray) -> tuple[float, np.ndarray]:
            value = np.logaddexp(0.0, f) - y * f
            return float(value.sum()), 0.5 * (1.0 + np.tanh(f / 2)) - y
        return logistic
    y_t = torch.from_numpy(y)

    def custom(f: np.ndarray) -> tuple[float, np.ndarray]:
        ft = torch.from_numpy(f).requires_grad_(True)
        value = loss(ft, y_t)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"loss must return a torch tensor, got {type(value).__name__}")
        total = value.sum()
        (grad,) = torch.autograd.grad(total, ft)
        return float(total.detach()), grad.numpy()
    return custom


def _targets(loss: str | Callable, y: torch.Tensor, k_out: int | None) -> torch.Tensor:
    """Cross-entropy accepts integer class labels (N,) and makes them one-hot."""
    if loss == "cross_entropy" and y.shape[1] == 1:
        labels = y[:, 0]
        if not torch.equal(labels, labels.round()) or labels.min() < 0:
            raise ValueError("y_train for cross_entropy must be integer class labels (N,) or one-hot / "
                             "probabilities (N, k)")
        k = int(labels.max()) + 1 if k_out is None else k_out
        if int(labels.max()) >= k:
            raise ValueError(f"y_train has label {int(labels.max())} but f0_train has only {k} outputs")
        return torch.nn.functional.one_hot(labels.long(), max(k, 2)).to(y.dtype)
    return y


def gradient_flow(K_train: Array, y_train: Array, t: Any, *, loss: str | Callable = "cross_entropy",
                  f0_train: Array | None = None, K_test_train: Array | None = None, f0_test: Array | None = None,
                  method: str = "LSODA", rtol: float = 1e-8, atol: float = 1e-10) -> FlowResult:
    """Integrate kernel gradient descent d/dt f = -(1/N) K d|_f for a general loss.

    Args:
        K_train: (N, N) symmetric Gram K(X, X). y_train: targets, (N,) or (N, k) (for "cross_entropy"
            also integer class labels (N,)).
        t: a time >= 0 or a 1-D array of finite times (any order).
        loss: "mse" (`l = |f - y|^2 / 2`), "cross_entropy" (softmax, k >= 2 outputs), "logistic" (one logit,
            y in [0, 1]), or a callable l(f, y) on torch tensors f (N, k) returning per-point losses
            (or their sum), differentiated by autograd.
        f0_train, f0_test: outputs at t = 0 (default 0). K_test_train: (M, N) cross Gram for new points.
        method, rtol, atol: passed to `scipy.integrate.solve_ivp` ("LSODA" switches to a stiff solver when
            the spread of the eigenvalues of K/N calls for it).

    Returns a `FlowResult` (NumPy arrays for NumPy K_train, torch otherwise; float64).
    """
    if not (callable(loss) or loss in LOSSES):
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))} or a callable, got {loss!r}")
    K, numpy_in = check_gram(K_train, "K_train")
    n = K.shape[0]
    times, _ = check_times(t)                     # results always carry the time axis
    if np.isinf(times).any():
        raise ValueError("t must be finite for gradient_flow (the ODE is integrated numerically)")
    f0 = None if f0_train is None else check_targets(f0_train, n, "f0_train", K.dtype, K.device)
    y = _targets(loss, check_targets(y_train, n, "y_train", K.dtype, K.device), None if f0 is None else f0.shape[1])
    k = y.shape[1]
    f0 = torch.zeros(n, k, dtype=K.dtype) if f0 is None else f0
    if f0.shape != y.shape:
        raise ValueError(f"f0_train must have shape {tuple(y.shape)}, got {tuple(f0.shape)}")
    K_np, y_np, f0_np = K.cpu().numpy(), y.cpu().numpy(), f0.cpu().numpy()
    loss_grad = _loss_and_grad(loss, y_np)

    def rhs(_: float, state: np.ndarray) -> np.ndarray:
        f = state[: n * k].reshape(n, k)
        _, d = loss_grad(f)
        return np.concatenate([(-(K_np @ d) / n).ravel(), d.ravel()])      # [d/dt f(X), d/dt int d]

    states = _integrate(rhs, np.concatenate([f0_np.ravel(), np.zeros(n * k)]), times, method, rtol, atol)
    train = states[:, : n * k].reshape(-1, n, k)
    integral = states[:, n * k:].reshape(-1, n, k)
    losses = np.array([loss_grad(f)[0] / n for f in train])
    test = None if K_test_train is None else _test_outputs(K_test_train, f0_test, integral, K)
    convert = (lambda a: a) if numpy_in else torch.from_numpy
    return FlowResult(times=times, train=convert(train), test=None if test is None else convert(test),
                      loss=losses)


def _integrate(rhs: Callable, state0: np.ndarray, times: np.ndarray, method: str, rtol: float, atol: float
               ) -> np.ndarray:
    """The states (T, S) of d/dt state = rhs(t, state) from state0 (S,) at the times (T,) in their given order
    (`scipy.integrate.solve_ivp`; a RuntimeError with its message if it fails)."""
    from scipy.integrate import solve_ivp

    order = np.argsort(times)
    t_end = float(times.max())
    if t_end <= 0:
        return np.tile(state0, (len(times), 1))
    sol = solve_ivp(rhs, (0.0, t_end), state0, method=method, t_eval=times[order], rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    states = np.empty((len(times), state0.size))
    states[order] = sol.y.T
    return states


def _test_outputs(K_test_train: Array, f0_test: Array | None, integral: np.ndarray, K: torch.Tensor) -> np.ndarray:
    """f_t(X*) = f_0(X*) - K(X*, X) int_0^t d / N for each time (T, M, k), from the integrals (T, N, k) of the
    loss gradient d over time."""
    n, k = integral.shape[1], integral.shape[2]
    Ks = check_cross_gram(K_test_train, n, "K_test_train", K.dtype, K.device).cpu().numpy()
    m = Ks.shape[0]
    g0 = np.zeros((m, k)) if f0_test is None else \
        check_targets(f0_test, m, "f0_test", K.dtype, K.device).cpu().numpy()
    if g0.shape != (m, k):
        raise ValueError(f"f0_test must have shape {(m, k)}, got {g0.shape}")
    return g0[None] - np.einsum("mn,tnk->tmk", Ks, integral) / n
