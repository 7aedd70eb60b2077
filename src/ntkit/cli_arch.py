"""`ntkit kernel --arch`: an architecture from a short spec or from a Python file.

Spec grammar (comma-separated layers, applied in order):

    conv<k>[s<stride>]   a convolution with kernel size k (Conv1d on (N, C, L) inputs, Conv2d on (N, C, H, W))
    pool<k>              average pooling over windows of k (stride k)
    gap                  global average pooling (flat outputs)
    flatten              flatten the positions and channels
    linear               a fully-connected layer
    layernorm            layer normalization over the features of flat inputs
    <name>               a nonlinearity: relu, erf, tanh, gelu, sigmoid, softplus, ... (the names of ntkit.activations)

Weight layers take --W-std and --beta. Example: "conv3,relu,pool2,conv3,relu,gap,linear".
A file spec "path/to/file.py:NAME" names an ntkit architecture (nk.Sequential, nk.MLP) or a torch nn.Sequential
(translated by nk.infinite) defined in that file.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from torch import nn

from . import layers as L
from .mlp import MLP

GRAMMAR = __doc__.split("Spec grammar")[1].split("A file spec")[0]


def from_spec(spec: str, dims: int, W_std: float, b_std: float) -> L.Sequential:
    """The architecture of a spec for inputs with `dims` spatial dimensions (0: flat, 1: sequences, 2: images)."""
    tokens = [token.strip().lower() for token in spec.split(",")]
    if not spec.strip() or any(not token for token in tokens):
        raise ValueError(f"--arch {spec!r}: give layers separated by commas, e.g. 'conv3,relu,gap,linear'")
    built = []
    for token in tokens:
        built.append(_layer(token, dims, W_std, b_std, spec))
    return L.Sequential(*built)


def _layer(token: str, dims: int, W_std: float, b_std: float, spec: str) -> L.Layer:
    conv = re.fullmatch(r"conv(\d+)(?:s(\d+))?", token)
    pool = re.fullmatch(r"pool(\d+)", token)
    if (conv or pool) and dims not in (1, 2):
        raise ValueError(f"--arch {spec!r}: {token!r} needs images (N, C, H, W) or sequences (N, C, L); the inputs "
                         f"are flat rows (give a .npy of that shape, or --in-shape)")
    if conv:
        kind = L.Conv1d if dims == 1 else L.Conv2d
        return kind(int(conv.group(1)), stride=int(conv.group(2) or 1), W_std=W_std, b_std=b_std)
    if pool:
        return (L.AvgPool1d if dims == 1 else L.AvgPool2d)(int(pool.group(1)))
    simple = {"gap": L.GlobalAvgPool, "flatten": L.Flatten, "layernorm": L.LayerNorm}
    if token in simple:
        return simple[token]()
    if token == "linear":
        return L.Linear(W_std=W_std, b_std=b_std)
    try:
        return L.Activation(token)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--arch {spec!r}: unknown layer {token!r} (see ntkit kernel --help for the grammar): "
                         f"{exc}") from None


def from_file(spec: str) -> Any:
    """The architecture NAME of "path/to/file.py:NAME" (a torch nn.Sequential is translated by nk.infinite)."""
    path, _, name = spec.rpartition(":")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--arch {spec!r}: the file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_ntkit_arch_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ValueError(f"--arch {spec!r}: running {path!r} failed: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, name):
        raise ValueError(f"--arch {spec!r}: {path!r} defines no {name!r}")
    arch = getattr(module, name)
    if isinstance(arch, nn.Module):
        return L.infinite(arch)
    if not isinstance(arch, (L.Sequential, MLP)):
        raise ValueError(f"--arch {spec!r}: {name} is a {type(arch).__name__}, not an ntkit architecture "
                         "(nk.Sequential, nk.MLP) or a torch nn.Sequential")
    return arch


def build(spec: str, dims: int, W_std: float, b_std: float) -> Any:
    """A file spec when it names a .py file, else the layer spec."""
    if ".py:" in spec:
        return from_file(spec)
    return from_spec(spec, dims, W_std, b_std)
