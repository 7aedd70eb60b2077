"""Kernel tiles packed for Dask workers: the inputs travel as out-of-band pickle buffers (no copy inside the
message), also when a worker passes them on, and the rebuilt tiles give bitwise the same Gram."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import gram

pytest.importorskip("cloudpickle")
from ntkit.gram.packed import SMALLEST, Packed  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def send(packed: Packed, read_only: bool = False) -> tuple[Packed, int, int]:
    """`packed` through pickle protocol 5 as Dask sends it: (the copy received, bytes in the message, bytes
    out of band). Out-of-band buffers arrive as writable bytearrays, or read-only bytes."""
    buffers: list[pickle.PickleBuffer] = []
    message = pickle.dumps(packed, protocol=5, buffer_callback=buffers.append)
    frames = [bytes(buffer.raw()) if read_only else bytearray(buffer.raw()) for buffer in buffers]
    return pickle.loads(message, buffers=frames), len(message), sum(len(frame) for frame in frames)


@pytest.mark.parametrize("read_only", [False, True])
def test_inputs_travel_out_of_band_and_the_gram_is_bitwise_the_same(read_only):
    X = torch.randn(700, 90, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    Y = torch.randn(300, 90, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tiles = nk.MLP(3, activation="erf").kernel_tiles(X, Y, get=("ntk", "nngp"), tile=128)
    received, in_message, out_of_band = send(Packed(tiles), read_only)
    assert out_of_band >= X.numel() * 8 + Y.numel() * 8  # X and Y travelled as frames
    assert in_message < X.numel() * 8 / 10
    rebuilt = received.tiles()
    assert received.tiles() is rebuilt  # unpacked once per worker
    for ours, theirs in zip(gram.evaluate(tiles), gram.evaluate(rebuilt), strict=True):
        assert torch.equal(ours, theirs)
    passed_on, _, again = send(received)  # a worker that passes the tiles to another: out of band again
    assert again == out_of_band
    assert torch.equal(gram.evaluate(passed_on.tiles())[0], gram.evaluate(tiles)[0])


def test_tensors_received_read_only_are_copied_so_they_can_be_written():
    X = torch.randn(400, 50, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    received, _, _ = send(Packed(nk.MLP(2).kernel_tiles(X, tile=100)), read_only=True)
    frames = [np.frombuffer(frame, dtype=np.uint8) for frame in received.buffers]
    assert frames and not any(frame.flags.writeable for frame in frames)
    spans = [(frame.ctypes.data, frame.ctypes.data + frame.nbytes) for frame in frames]
    found = [value for value in _tensors(received.tiles()) if value.numel() * value.element_size() >= SMALLEST]
    assert found, "X should have travelled out of band"
    for tensor in found:  # a copy, not a tensor over the read-only frame
        assert not any(start <= tensor.data_ptr() < stop for start, stop in spans)
        assert torch.equal(tensor, X) or tensor.shape != X.shape


def test_rows_of_a_larger_tensor_send_their_own_bytes_only():
    base = torch.randn(5000, 40, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    rows = base[1000:1600]  # a contiguous view: 192 KB of a 1.6 MB storage
    received, _, out_of_band = send(Packed({"rows": rows}))
    assert out_of_band == rows.numel() * 8
    assert torch.equal(received.tiles()["rows"], rows) and received.tiles()["rows"].stride() == rows.stride()


def test_views_small_tensors_and_bfloat16_stay_in_the_message_and_come_back_equal():
    base = torch.randn(64, 600, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    values = {"view": base[:, ::2], "small": torch.arange(10.0), "bf16": base.to(torch.bfloat16),
              "rows": base[10:20]}
    packed = Packed(values)
    received, _, out_of_band = send(packed)
    assert out_of_band == 0
    for name, value in values.items():
        assert torch.equal(received.tiles()[name], value), name


def _tensors(value, seen=None):
    """The torch tensors reachable from `value` through closures, attributes and containers."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return [value]
    found = []
    children = []
    if isinstance(value, (list, tuple, set)):
        children = list(value)
    elif isinstance(value, dict):
        children = list(value.values())
    elif callable(value) and getattr(value, "__closure__", None):
        children = [cell.cell_contents for cell in value.__closure__]
    if hasattr(value, "__dict__") and not isinstance(value, type):
        children += list(vars(value).values())
    if hasattr(value, "func"):
        children += [value.func, *getattr(value, "args", ()), *getattr(value, "keywords", {}).values()]
    for child in children:
        found += _tensors(child, seen)
    return found
