"""A `KernelTiles` sent to Dask workers without copying its inputs.

Pickling a torch tensor copies its bytes into the pickle, and unpickling copies them out again: for the inputs
X of a Gram at N = 20,000, d = 784 (125 MB in float64) that cost about 0.3 s per worker before its first tile,
on top of the transfer. `Packed` pickles the tiles once, on the client, with every large contiguous CPU
tensor given to pickle (protocol 5) as an out-of-band buffer: Dask sends such buffers as separate frames,
without copying them into the message, and the worker rebuilds the tensors over the frames it received. A
worker unpacks the tiles once, at their first task, and every later task reuses them.
"""

from __future__ import annotations

import io
import pickle
from functools import cache
from typing import Any

import numpy as np
import torch

from .tiles import KernelTiles

SMALLEST = 1 << 16  # tensors of fewer bytes stay inside the pickle


def _tensor(buffer: Any, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor over `buffer`'s memory (a frame Dask received), as pickled by `_pickler()`."""
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    if not array.flags.writeable:  # a read-only frame: copied, so the tensor may be written as any tensor can
        array = array.copy()
    return torch.from_numpy(array)


@cache
def _pickler() -> type:
    """cloudpickle's Pickler, with large contiguous CPU tensors reduced to NumPy arrays pickled out of band.
    (cloudpickle comes with Dask, the only user of this module: imported here, not when ntkit is.)"""
    import cloudpickle

    class Pickler(cloudpickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            # contiguous tensors only: a worker must see the same strides (the same BLAS calls, the same bits); a
            # contiguous view (rows of a larger tensor) sends its own bytes, not all of its storage as torch would
            if (isinstance(obj, torch.Tensor) and type(obj) is torch.Tensor and obj.device.type == "cpu"
                    and not obj.requires_grad and obj.is_contiguous()
                    and obj.numel() * obj.element_size() >= SMALLEST and obj.dtype != torch.bfloat16):
                array = obj.numpy()
                return _tensor, (pickle.PickleBuffer(array), array.dtype.str, tuple(array.shape))
            return super().reducer_override(obj)

    return Pickler


class Packed:
    """`tiles` pickled once, its large tensors as out-of-band buffers (what Dask scatters to the workers).

    `tiles()` on a worker rebuilds the `KernelTiles` over the received buffers, once per worker."""

    def __init__(self, tiles: KernelTiles):
        buffers: list[pickle.PickleBuffer] = []
        stream = io.BytesIO()
        _pickler()(stream, protocol=5, buffer_callback=buffers.append).dump(tiles)
        self.header, self.buffers = stream.getvalue(), buffers
        self._tiles: KernelTiles | None = tiles

    def __getstate__(self) -> dict[str, Any]:  # out of band again when a worker passes them on to another
        return {"header": self.header, "buffers": [pickle.PickleBuffer(buffer) for buffer in self.buffers]}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.header, self.buffers, self._tiles = state["header"], state["buffers"], None

    def tiles(self) -> KernelTiles:
        if self._tiles is None:  # two threads of one worker may both unpack: the same tiles, one is kept
            self._tiles = pickle.loads(self.header, buffers=self.buffers)
        return self._tiles
