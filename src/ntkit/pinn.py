"""The infinitely wide physics-informed network: operator kernels and their kernel gradient descent.

A physics-informed network u(x) = net(x) is trained so that u = h on boundary points X_b and L u = g on residual
points X_r, for a linear differential operator L (constant coefficients, derivatives up to second order), on the
loss (1/2) sum_b (u(x_b) - h_b)^2 + (1/2) sum_r (L u(x_r) - g_r)^2. In the infinite-width limit its training is
kernel gradient descent on the outputs z = [u(X_b); L u(X_r)] with the block Gram (Wang, Yu and Perdikaris 2022)

    K = [[K_uu, K_ur], [K_ru, K_rr]],   K_uu = Theta(X_b, X_b),  K_ur = L_y Theta(X_b, X_r),
                                         K_ru = K_ur^T,           K_rr = L_x L_y Theta(X_r, X_r),

and the mean of the trained network at time t is u_t(x) = [Theta(x, X_b), L_y Theta(x, X_r)] K^-1 (I - e^{-t K}) z*
(t = inf: kernel regression), computed by `ntkit.dynamics.LeastSquares`.

`operator_kernel` forms L_x R_y Theta(x, y) for chains of dense layers and nonlinearities (MLP, the usual PINN) from
the kernel as a function of x.y, |x|^2 and |y|^2, in O(N M) (`ntkit.pinn_dense`), and for any other architecture by
autograd through `arch.kernel`: each row of
Theta(X, Y) depends on its own x only, so a derivative along coordinate a of every x at once is the derivative in a
shift s of all of X (X + s e_a), taken as a vector-Jacobian product of a vector-Jacobian product. The maps of the
activations must be smooth: ReLU-like ones (relu, leaky_relu, abs, sign, step: no second derivative) are refused,
and activations by quadrature must take their Hermite path (`ntkit.activations.hermite`), which is differentiable to
any order (a ValueError names the activation where it does not converge).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from . import pinn_dense
from ._checks import as_matrix, to_output
from .activations import Nonlinearity, PiecewiseLinear, Quadrature, Sign, Step
from .dynamics import LeastSquares

Array = torch.Tensor | np.ndarray


class Operator:
    """A linear differential operator with constant coefficients, L u = sum_j coef_j d^k u / dx_i1 .. dx_ik, k <= 2.

    Build it from `identity()`, `derivative(i)`, `derivative(i, j)`, `laplacian(dim)`, `advection(velocity)` with
    sums, differences and multiples: e.g. `laplacian(2) - 3 * derivative(0) + identity()`. `terms` holds
    (coef, coordinates)."""

    def __init__(self, terms: Iterable[tuple[float, tuple[int, ...]]]):
        merged: dict[tuple[int, ...], float] = {}
        for coef, coords in terms:
            key = tuple(sorted(int(i) for i in coords))
            merged[key] = merged.get(key, 0.0) + float(coef)
        self.terms: tuple[tuple[float, tuple[int, ...]], ...] = tuple(
            (coef, key) for key, coef in sorted(merged.items()) if coef != 0.0)

    @property
    def order(self) -> int:
        """The highest derivative order (0 for the identity)."""
        return max((len(coords) for _, coords in self.terms), default=0)

    def __add__(self, other: Operator) -> Operator:
        if not isinstance(other, Operator):
            return NotImplemented
        return Operator(self.terms + other.terms)

    def __mul__(self, scale: float) -> Operator:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            return NotImplemented
        return Operator((scale * coef, coords) for coef, coords in self.terms)

    __rmul__ = __mul__

    def __neg__(self) -> Operator:
        return -1.0 * self

    def __sub__(self, other: Operator) -> Operator:
        return self + (-other)

    def __repr__(self) -> str:
        parts = [f"{coef:g} " + ("u" if not coords else "d^{}u/{}".format(
            len(coords), "".join(f"dx{i}" for i in coords))) for coef, coords in self.terms]
        return "Operator(" + (" + ".join(parts) or "0") + ")"


def identity() -> Operator:
    """L u = u."""
    return Operator([(1.0, ())])


def derivative(*coordinates: int) -> Operator:
    """du/dx_i (one coordinate) or d^2u/dx_i dx_j (two)."""
    if not 1 <= len(coordinates) <= 2:
        raise ValueError(f"derivative takes one or two coordinates (orders 1 and 2), got {len(coordinates)}")
    for i in coordinates:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
            raise ValueError(f"coordinates must be integers >= 0, got {i!r}")
    return Operator([(1.0, tuple(int(i) for i in coordinates))])


def laplacian(dim: int) -> Operator:
    """sum_i d^2u/dx_i^2 over the first `dim` coordinates."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    return Operator([(1.0, (i, i)) for i in range(dim)])


def gradient(dim: int) -> list[Operator]:
    """[du/dx_0, ..., du/dx_{dim-1}]: one operator per component."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    return [derivative(i) for i in range(dim)]


def advection(velocity: Sequence[float]) -> Operator:
    """v . grad u for a constant velocity v."""
    return Operator([(float(v), (i,)) for i, v in enumerate(velocity)])


def _check_operator(op: Operator | None, features: int, name: str) -> Operator:
    if op is None:
        return identity()
    if not isinstance(op, Operator):
        raise TypeError(f"{name} must be an ntkit.pinn.Operator (or None for the identity), got {type(op).__name__}")
    for _, coords in op.terms:
        if any(i >= features for i in coords):
            raise ValueError(f"{name} differentiates along coordinate {max(coords)}, but the inputs have only "
                             f"{features} features")
    return op


def _activations(obj: Any, seen: set[int]) -> Iterator[Nonlinearity]:
    """Every nonlinearity inside an architecture (MLP, Sequential and their layers)."""
    if isinstance(obj, Nonlinearity):
        yield obj
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _activations(item, seen)
    elif type(obj).__module__.startswith("ntkit") and hasattr(obj, "__dict__"):
        for value in vars(obj).values():
            yield from _activations(value, seen)


@contextlib.contextmanager
def _smooth(arch: Any) -> Iterator[None]:
    """Refuse ReLU-like activations; make quadrature activations refuse their non-smooth fallback meanwhile."""
    acts = list(_activations(arch, set()))
    for act in acts:
        if isinstance(act, (PiecewiseLinear, Sign, Step)):
            raise ValueError(f"activation {act.name!r} has no second derivative (a kink or jump at 0), so the operator "
                             f"kernels of its network do not exist; use a smooth activation (tanh, erf, sigmoid, "
                             f"softplus, silu, gelu, sin)")
    quadrature = [act for act in acts if isinstance(act, Quadrature)]
    before = [act.require_fast for act in quadrature]
    for act in quadrature:
        act.require_fast = True
    try:
        yield
    finally:
        for act, flag in zip(quadrature, before, strict=True):
            act.require_fast = flag


def _directional(values: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """d values / d shift elementwise (values: any shape, shift: a 0-d tensor) by a vector-Jacobian product of a
    vector-Jacobian product, with the graph kept for further derivatives."""
    probe = torch.zeros_like(values, requires_grad=True)
    (inner,) = torch.autograd.grad((values * probe).sum(), shift, create_graph=True, allow_unused=True)
    if inner is None or not inner.requires_grad:
        return torch.zeros_like(values)
    (outer,) = torch.autograd.grad(inner, probe, create_graph=True, allow_unused=True)
    return torch.zeros_like(values) if outer is None else outer


def _block(arch: Any, X: torch.Tensor, Y: torch.Tensor, left: Operator, right: Operator, get: str) -> torch.Tensor:
    """L_x R_y of the kernel on one block of rows."""
    d = X.shape[1]
    sx = [X.new_zeros((), requires_grad=True) for _ in range(d)]
    sy = [X.new_zeros((), requires_grad=True) for _ in range(d)]
    with torch.enable_grad():
        kernel = arch.kernel(X + torch.stack(sx), Y + torch.stack(sy), get=get)
        cache: dict[tuple[tuple[int, ...], tuple[int, ...]], torch.Tensor] = {((), ()): kernel}

        def deriv(xs: tuple[int, ...], ys: tuple[int, ...]) -> torch.Tensor:
            if (xs, ys) not in cache:
                cache[(xs, ys)] = (_directional(deriv(xs[:-1], ys), sx[xs[-1]]) if xs else
                                   _directional(deriv((), ys[:-1]), sy[ys[-1]]))
            return cache[(xs, ys)]

        total = torch.zeros_like(kernel)
        for cl, xs in left.terms:
            for cr, ys in right.terms:
                total = total + (cl * cr) * deriv(xs, ys)
    return total


def operator_kernel(arch: Any, X: Array, Y: Array | None = None, left: Operator | None = None,
                    right: Operator | None = None, get: str = "ntk", chunk: int = 256, method: str = "auto") -> Array:
    """L_x R_y K(x, y) for every pair: (N, M), K the architecture's "ntk" (Theta) or "nngp" (Sigma).

    arch: any architecture with `kernel(X, Y, get=...)` (MLP, Sequential on flat inputs) and smooth activations.
    X (N, d), Y (M, d) (default X); left acts on x, right on y (None: the identity).
    method "dense" is for chains of dense layers and nonlinearities (MLP, Sequential(Linear, Tanh, ..., Linear)):
    the kernel as a function of x.y, ``|x|^2`` and ``|y|^2``, its partials carried through the recursion as Taylor
    polynomials (`ntkit.pinn_dense`), O(N M) work in all; "autograd" for any architecture: nested autograd
    through `arch.kernel`, in blocks of `chunk` rows (each holds a few graphs of (chunk, M)); "auto" (default):
    "dense" where it applies (such a chain, no gradient wanted through X or Y, the Hermite series of the
    nonlinearities converged at the variances met), else "autograd".

    Differentiable in X and Y when they require grad (then "autograd"). NumPy in, NumPy out."""
    Xt, numpy = as_matrix(X, "X")
    Yt = Xt if Y is None else as_matrix(Y, "Y", dtype=Xt.dtype, device=Xt.device)[0]
    if Yt.shape[1] != Xt.shape[1]:
        raise ValueError(f"X and Y must have the same number of features, got {Xt.shape[1]} and {Yt.shape[1]}")
    if get not in ("ntk", "nngp"):
        raise ValueError(f"get must be 'ntk' or 'nngp', got {get!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    if method not in ("auto", "dense", "autograd"):
        raise ValueError(f"method must be 'auto', 'dense' or 'autograd', got {method!r}")
    left = _check_operator(left, Xt.shape[1], "left")
    right = _check_operator(right, Xt.shape[1], "right")
    keep = torch.is_grad_enabled() and (Xt.requires_grad or Yt.requires_grad)
    with _smooth(arch):
        chain = None if method == "autograd" or keep or not Xt.shape[0] * Yt.shape[0] else \
            pinn_dense.dense_chain(arch)
        if chain is not None:                          # the architecture's own checks (parametrization, ranges)
            arch.kernel_diag(Xt, get=get)
            arch.kernel_diag(Yt, get=get)
        if method != "autograd" and not keep and left.order == right.order == 0:    # multiples of the kernel
            scale = sum(c for c, _ in left.terms) * sum(c for c, _ in right.terms)
            return to_output(scale * arch.kernel(Xt, None if Y is None else Yt, get=get), numpy)
        if chain is not None and pinn_dense.ready(chain, Xt, Yt, left, right):
            symmetric = Y is None and left.terms == right.terms
            out = pinn_dense.dense_operator_kernel(chain, Xt, Yt, left, right, get, symmetric).to(Xt.dtype)
            return to_output(out, numpy)
        if method == "dense":
            raise ValueError("method='dense' needs a chain of dense layers and nonlinearities (dense first and last, "
                             "W_std and b_std not differentiated), no gradient through X or Y, and nonlinearities "
                             "whose Hermite series converge at the variances met; use method='auto'")
        blocks = [_block(arch, Xt[i:i + chunk], Yt, left, right, get) for i in range(0, Xt.shape[0], chunk)]
    out = torch.cat(blocks) if blocks else Xt.new_zeros((0, Yt.shape[0]))
    return to_output(out if keep else out.detach(), numpy)


class PhysicsInformed:
    """The mean of an infinitely wide physics-informed network trained by gradient flow (module docstring).

    Args:
        arch: the architecture (smooth activations), e.g. `nk.MLP(depth=3, activation="tanh")`.
        operator: L in L u = g.
        X_boundary: the (N_b, d) points where u is given.
        u_boundary: the (N_b,) values h of u there.
        X_residual: the (N_r, d) collocation points.
        g_residual: the (N_r,) values of the right-hand side g there.
        ridge: >= 0 added to the block Gram (0: the exact flow; a small ridge steadies t = inf when K_rr's spectrum
            spans many orders, as it does).
    Attributes K_uu, K_ur, K_rr: the blocks (float64 tensors); `dynamics`: the `ntkit.dynamics.LeastSquares` on K.
    """

    def __init__(self, arch: Any, operator: Operator, X_boundary: Array, u_boundary: Array, X_residual: Array,
                 g_residual: Array, *, ridge: float = 0.0):
        if not isinstance(operator, Operator):
            raise TypeError(f"operator must be an ntkit.pinn.Operator, got {type(operator).__name__}")
        self.arch, self.operator = arch, operator
        self._numpy = isinstance(u_boundary, np.ndarray)
        self.X_boundary = as_matrix(X_boundary, "X_boundary", dtype=torch.float64)[0]
        self.X_residual = as_matrix(X_residual, "X_residual", dtype=torch.float64)[0]
        if self.X_boundary.shape[1] != self.X_residual.shape[1]:
            raise ValueError(f"X_boundary and X_residual must have the same number of features, got "
                             f"{self.X_boundary.shape[1]} and {self.X_residual.shape[1]}")
        h = torch.as_tensor(np.asarray(u_boundary) if not isinstance(u_boundary, torch.Tensor) else u_boundary,
                            dtype=torch.float64).reshape(-1)
        g = torch.as_tensor(np.asarray(g_residual) if not isinstance(g_residual, torch.Tensor) else g_residual,
                            dtype=torch.float64).reshape(-1)
        if h.shape[0] != self.X_boundary.shape[0] or g.shape[0] != self.X_residual.shape[0]:
            raise ValueError(f"u_boundary needs one value per boundary point ({self.X_boundary.shape[0]}, got "
                             f"{h.shape[0]}) and g_residual one per residual point ({self.X_residual.shape[0]}, "
                             f"got {g.shape[0]})")
        Xb, Xr = self.X_boundary, self.X_residual
        self.K_uu = operator_kernel(arch, Xb, Xb)
        self.K_ur = operator_kernel(arch, Xb, Xr, right=operator)
        self.K_rr = operator_kernel(arch, Xr, Xr, left=operator, right=operator)
        K = torch.cat([torch.cat([self.K_uu, self.K_ur], 1), torch.cat([self.K_ur.T, self.K_rr], 1)])
        self.dynamics = LeastSquares((K + K.T) / 2, torch.cat([h, g]), ridge=ridge)

    def _cross(self, X: Array, left: Operator | None) -> torch.Tensor:
        Xt = as_matrix(X, "X", dtype=torch.float64)[0]
        return torch.cat([operator_kernel(self.arch, Xt, self.X_boundary, left=left),
                          operator_kernel(self.arch, Xt, self.X_residual, left=left, right=self.operator)], 1)

    def _time(self, t: Any) -> Any:
        """The flow on the summed loss at time t is `LeastSquares`' flow on the mean loss (the paper's clock, kernel
        K / N) at time N t, N = N_b + N_r."""
        return np.asarray(t, dtype=np.float64) * self.dynamics.y_train.shape[0]

    def predict(self, X: Array, t: Any = np.inf) -> Array:
        """The mean u_t(x) at the points X (M, d): (M,), or (T, M) for an array of T times (t = inf by default).
        t is the time of gradient flow on the summed loss of the module docstring: gradient descent with learning
        rate lr for s steps reaches t = lr * s."""
        out = self.dynamics.predict(self._cross(X, None), self._time(t))
        return out.numpy() if self._numpy and isinstance(out, torch.Tensor) else out

    def predict_operator(self, X: Array, t: Any = np.inf) -> Array:
        """The mean of L u_t at the points X (M, d) (the residual's left side); t as in `predict`."""
        out = self.dynamics.predict(self._cross(X, self.operator), self._time(t))
        return out.numpy() if self._numpy and isinstance(out, torch.Tensor) else out


__all__ = ["Operator", "PhysicsInformed", "advection", "derivative", "gradient", "identity", "laplacian",
           "operator_kernel"]
