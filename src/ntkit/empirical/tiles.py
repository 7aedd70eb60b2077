"""`empirical_kernel_tiles`: the empirical NTK of a finite model as a `gram.KernelTiles`.

So a trained network's kernel goes through everything the infinite-width kernels use: `gram.evaluate`
into memory, memmaps or resumable zarr stores, Dask workers, `gram.matmul`, the CG and Nystrom solvers.
Each tile is computed by the method `empirical_ntk` would choose (the structured rules' plan is made once
and reused by every tile). mode="trace" gives the (N, M) Gram of the mean over outputs; mode="full" the
(N K, M K) Gram of every pair of outputs, row i K + k being output k of sample i.

The tiles' `describe` fingerprints the parameter and buffer values, so a store of another model (or of the
same model after training) is refused instead of resumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from .._checks import check_choice, check_positive_int
from ..gram.tiles import KernelTiles, default_tile
from .api import _resolve, _run
from .attention import plain_attention
from .common import Problem, Selector, make_problem, no_fused_attention, working_memory_limit
from .layerwise import layerwise_ntk, make_plan

TILE_MODES = ("trace", "full")


def parameter_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the names, shapes, dtypes and values of every parameter and buffer (and, for a function of
    the parameters, the function's name)."""
    digest = hashlib.sha256()
    fn = getattr(model, "fn", None)
    if fn is not None:
        digest.update(f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}".encode())
    for name, value in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(repr((name, tuple(value.shape), str(value.dtype))).encode())
        digest.update(np.ascontiguousarray(value.detach().cpu().reshape(-1).numpy()).tobytes())
    return digest.hexdigest()[:32]


class _Tiles:
    """The tile function: the problem, the chosen method and its cached plan (picklable for Dask)."""

    def __init__(self, problem: Problem, method: str, memory: int | None):
        self.problem, self.method, self.memory = problem, method, memory
        self.plan = None
        if method == "structured":
            with no_fused_attention():
                self.plan = make_plan(problem)

    def samples(self, index: slice | torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample indices of the Gram rows `index`, and for mode full the positions to pick after expanding."""
        if k == 1:
            return index, None
        flat = torch.arange(index.start, index.stop) if isinstance(index, slice) else index.long()
        samples, where = torch.unique(flat // k, return_inverse=True)
        return samples, where * k + flat % k

    def theta(self, X: torch.Tensor, Y: torch.Tensor | None) -> torch.Tensor:
        sub = dataclasses.replace(self.problem, X=X, Y=Y)
        with working_memory_limit(self.memory), no_fused_attention(), plain_attention(sub.model):
            if self.method == "structured":
                return layerwise_ntk(sub, None, False, plan=self.plan)
            return _run(sub, self.method, None, False)

    def __call__(self, rows: slice | torch.Tensor, cols: slice | torch.Tensor) -> list[torch.Tensor]:
        p = self.problem
        k = p.n_outputs if p.mode == "full" else 1
        (rs, rpick), (cs, cpick) = self.samples(rows, k), self.samples(cols, k)
        same = p.Y is None and _equal(rs, cs)
        theta = self.theta(p.X[rs], None if same else p.cols[cs])
        if p.mode == "full":
            b1, b2 = theta.shape[:2]
            theta = theta.permute(0, 2, 1, 3).reshape(b1 * k, b2 * k)[rpick][:, cpick]
        return [theta]

    def diag(self, rows: slice | torch.Tensor) -> list[torch.Tensor]:
        return [torch.diagonal(self(rows, rows)[0]).clone()]


def _equal(a: slice | torch.Tensor, b: slice | torch.Tensor) -> bool:
    if isinstance(a, slice) and isinstance(b, slice):
        return a == b
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    return False


def empirical_kernel_tiles(model: nn.Module | Callable, X: object, Y: object = None, *, mode: str = "trace",
                           method: str = "auto", params: Mapping[str, torch.Tensor] | None = None,
                           output: Selector = None, tile: int | None = None,
                           memory: int | None = None) -> KernelTiles:
    """The empirical NTK of `model` between X and Y as a `gram.KernelTiles` named ("ntk",).

    Args:
        model, X, Y, params, output: as for `empirical_ntk` (a module or a function f(params, X)).
        mode: "trace" -> an (N, M) Gram, Theta averaged over the K outputs; "full" -> (N K, M K), entry
            (i K + k, j K + k') = Theta_{k k'}(x_i, y_j).
        method: as for `empirical_ntk` ("auto": the structured rules where they apply). "ntk_vp" is not
            offered here: tiles take the structured or Jacobian methods.
        tile: the tile edge in Gram rows (default 512 on a CPU).
        memory: the working memory of one tile's intermediates in bytes (default as for `empirical_ntk`).

    Returns: KernelTiles in the parameters' dtype and device, with an exact diagonal (`diag`) and a
    `describe` that fingerprints the parameter values, so a store of another model is refused.
    """
    check_choice(mode, "mode", TILE_MODES)
    check_choice(method, "method", ("auto", "structured", "jacobian"))
    if tile is not None:
        tile = check_positive_int(tile, "tile")
    if memory is not None:
        memory = check_positive_int(memory, "memory")
    problem, _ = make_problem(model, X, Y, mode, params, output)
    if problem.X.shape[0] == 0 or problem.cols.shape[0] == 0:
        raise ValueError("X and Y must hold at least one sample each")
    with working_memory_limit(memory):
        chosen = _resolve(problem, method)  # auto's trial runs within the tiles' memory
    fn = _Tiles(problem, chosen, memory)
    k = problem.n_outputs if mode == "full" else 1
    fingerprint = parameter_fingerprint(problem.model)
    describe = (f"empirical_ntk(mode={mode!r}, K={problem.n_outputs}, output={output!r}) of "
                f"{type(problem.model).__name__} with parameters sha256:{fingerprint}")
    inputs = (problem.X,) if problem.Y is None else (problem.X, problem.Y)
    return KernelTiles(fn=fn, n=problem.X.shape[0] * k, m=problem.cols.shape[0] * k, names=("ntk",),
                       symmetric=problem.Y is None, dtype=problem.dtype, device=problem.device,
                       tile=tile or default_tile(problem.device), describe=describe, inputs=inputs,
                       diag=fn.diag if problem.Y is None else None)
