"""`EmpiricalKernel`: a finite model's empirical NTK with the interface of an architecture's kernel.

`ntkit.dynamics.InfiniteWidthGP` and its solvers (Cholesky, CG, Nystrom) take anything with `kernel`,
`kernel_tiles` and `kernel_diag` on flat rows (N, d). This adapter gives them Theta(theta) of a trained or
pretrained torch model (mode "trace": the mean over its outputs), so the mean of kernel gradient descent with the
model's NTK, at any time t, runs through the same code as the infinite-width kernels. The empirical kernel has no
NNGP partner: a standard deviation or covariance (which needs Sigma) is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import gram
from .api import empirical_ntk
from .common import Selector
from .tiles import empirical_kernel_tiles, parameter_fingerprint


def _dtype(X: Any, default: torch.dtype) -> torch.dtype:
    """The caller's floating dtype (the solvers work in it, float64 by default), else the model's."""
    return X.dtype if isinstance(X, torch.Tensor) and X.is_floating_point() else default


class _Cast:
    """A tile (or diagonal) function whose tiles are cast to `dtype`."""

    def __init__(self, fn: Callable, dtype: torch.dtype):
        self.fn, self.dtype = fn, dtype

    def __call__(self, *index: Any) -> list[torch.Tensor]:
        return [t.to(self.dtype) for t in self.fn(*index)]


class EmpiricalKernel:
    """Theta(theta) of `model` (trace over outputs) as an architecture's kernel on flat rows.

    Args:
        model: a torch.nn.Module (or a function f(params, X) with `params`).
        in_shape: the sample shape the model takes; rows (N, d) are reshaped to (N,) + in_shape (None: as they are).
        method, params, output, memory: as for `ntkit.empirical_ntk`.
    """

    def __init__(self, model: nn.Module | Callable, in_shape: tuple[int, ...] | None = None, *,
                 method: str = "auto", params: Any = None, output: Selector = None, memory: int | None = None):
        self.model, self.in_shape, self.method = model, in_shape, method
        self.params, self.output, self.memory = params, output, memory

    def _rows(self, X: Any) -> Any:
        if X is None or self.in_shape is None:
            return X
        X = torch.as_tensor(X)
        return X.reshape(X.shape[0], *self.in_shape)

    @staticmethod
    def _names(get: Any) -> tuple[str, ...]:
        names = (get,) if isinstance(get, str) else tuple(get)
        if any(name != "ntk" for name in names):
            raise ValueError(f"the empirical kernel of a finite model is its NTK only (get='ntk'), got get={get!r}: "
                             "its mean predictions are defined, a standard deviation or covariance (which needs the "
                             "NNGP) is not")
        return names

    def kernel(self, X: Any, Y: Any = None, get: Any = "ntk", *, progress: bool | None = None,
               client: Any = None, **_: Any) -> Any:
        """Theta(X, Y) (N, M) (a tuple when `get` is a tuple); on Dask workers with `client`."""
        names = self._names(get)
        if client is not None:
            (K,) = gram.evaluate(self.kernel_tiles(X, Y), client=client, show_progress=progress)
        else:
            K = empirical_ntk(self.model, self._rows(X), self._rows(Y), mode="trace", method=self.method,
                              params=self.params, output=self.output, memory=self.memory, progress=progress)
        K = torch.as_tensor(K).to(_dtype(X, K.dtype))
        return K if isinstance(get, str) else tuple(K for _ in names)

    def kernel_tiles(self, X: Any, Y: Any = None, get: Any = "ntk", *, tile: int | None = None,
                     **_: Any) -> gram.KernelTiles:
        """`empirical_kernel_tiles` of X and Y (mode "trace")."""
        self._names(get)
        method = "auto" if self.method == "ntk_vp" else self.method
        tiles = empirical_kernel_tiles(self.model, self._rows(X), self._rows(Y), mode="trace", method=method,
                                       params=self.params, output=self.output, tile=tile, memory=self.memory)
        dtype = _dtype(X, tiles.dtype)
        if dtype == tiles.dtype:
            return tiles
        return dataclasses.replace(tiles, fn=_Cast(tiles.fn, dtype), dtype=dtype,
                                   diag=None if tiles.diag is None else _Cast(tiles.diag, dtype))

    def kernel_diag(self, X: Any, get: Any = "ntk", **_: Any) -> Any:
        """Theta(x_i, x_i) for every row of X: (N,)."""
        self._names(get)
        tiles = self.kernel_tiles(X)
        return torch.cat([tiles.diag(slice(i, min(i + tiles.tile, tiles.n)))[0] for i in range(0, tiles.n, tiles.tile)])

    @property
    def describe(self) -> str:
        module = self.model if isinstance(self.model, nn.Module) else None
        what = parameter_fingerprint(module) if module is not None else getattr(self.model, "__qualname__", "f")
        return f"EmpiricalKernel({type(self.model).__name__}, in_shape={self.in_shape}, parameters {what})"
