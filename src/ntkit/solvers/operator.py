"""A symmetric kernel as an operator: the one thing the iterative solvers need from it.

`KernelOperator` wraps either a Gram K(X, X) held in memory or a `gram.KernelTiles` of a symmetric kernel
(matrix-free: every product recomputes the tiles, memory O(N d + N k)). The solvers use only its products
K V, its diagonal and selected columns, so they never know which architecture made the kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import gram


class KernelOperator:
    """K (N, N), symmetric positive semi-definite, from a Gram or from tiles.

    Args:
        kernel: an (N, N) tensor, or a symmetric `KernelTiles` (its first name is used).
        client: a dask.distributed.Client for matrix-free products on Dask workers (tiles only).
        progress: progress bars for matrix-free products (None: the global setting).
    """

    def __init__(self, kernel: torch.Tensor | gram.KernelTiles, *, client: Any = None, progress: bool | None = None):
        if isinstance(kernel, gram.KernelTiles):
            if not kernel.symmetric:
                raise ValueError("the kernel of a solver must be symmetric: K(X, X), not a cross kernel")
            self.tiles, self.gram, self.n = kernel, None, kernel.n
            self.dtype, self.device = kernel.dtype, kernel.device
        elif isinstance(kernel, torch.Tensor):
            if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
                raise ValueError(f"the Gram must be square, got shape {tuple(kernel.shape)}")
            self.tiles, self.gram, self.n = None, kernel, kernel.shape[0]
            self.dtype, self.device = kernel.dtype, kernel.device
        else:
            raise TypeError(f"kernel must be a Gram tensor or a KernelTiles, got {type(kernel).__name__}")
        self.client, self.progress = client, progress
        self._diag: torch.Tensor | None = None
        self.matvecs = 0   # products computed so far (each a pass over K)

    @property
    def matrix_free(self) -> bool:
        return self.gram is None

    def matmul(self, V: torch.Tensor) -> torch.Tensor:
        """K V for V (N, k): (N, k)."""
        self.matvecs += 1
        if self.gram is not None:
            return self.gram @ V
        kwargs = {} if self.client is None else {"client": self.client}
        return gram.matmul(self.tiles, V, show_progress=self.progress if self.n > 20_000 else False, **kwargs)

    def diag(self) -> torch.Tensor:
        """diag(K), (N,)."""
        if self._diag is None:
            self._diag = self.gram.diagonal().clone() if self.gram is not None else \
                self.tiles.diag(slice(0, self.n))[0]
        return self._diag

    def columns(self, index: torch.Tensor) -> torch.Tensor:
        """K[:, index], (N, len(index)), with the exact diagonal entries K(x_p, x_p) at the rows p = index."""
        if self.gram is not None:
            return self.gram[:, index]
        block = self.tiles(slice(0, self.n), index)[0]
        block[index, torch.arange(len(index), device=block.device)] = self.diag()[index]
        return block
