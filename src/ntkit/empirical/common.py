"""What every empirical-NTK method shares.

The empirical NTK of a model F(x; theta) with K outputs (the paper, Section 4) is

    Theta_{k k'}(x, y) = sum_p dF_k(x)/dtheta_p dF_k'(y)/dtheta_p

summed over the trainable parameters p. This module turns a model and inputs into a checked
`Problem` (trainable parameters, frozen ones and buffers, K, a per-sample cost estimate), holds
the three output modes and the contraction of per-sample gradient blocks into a tile of Theta
(the loop over pairs of blocks is in blocking.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from .._checks import as_tensor
from .models import FunctionModel, Selector, as_model, no_fused_attention  # noqa: F401 (re-exported)

MODES = ("full", "trace", "diagonal")
Array = torch.Tensor | np.ndarray

#: Working memory for the intermediate blocks (features, Jacobians, tiles) on a CPU, in bytes.
CPU_WORKING_MEMORY = 1 << 30
_memory_limit: list[int] = []  # set by `working_memory_limit` (the `memory=` argument)


def working_memory(device: torch.device) -> int:
    """Bytes the intermediate blocks may take: the `memory=` argument when given, else 1 GiB on a CPU,
    a quarter of the free memory on a GPU."""
    if _memory_limit:
        return _memory_limit[-1]
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(free // 4, 1 << 28)
    return CPU_WORKING_MEMORY


@contextmanager
def working_memory_limit(nbytes: int | None) -> Iterator[None]:
    """`working_memory` returns `nbytes` inside the context (nothing changes for None)."""
    if nbytes is not None:
        _memory_limit.append(int(nbytes))
    try:
        yield
    finally:
        if nbytes is not None:
            _memory_limit.pop()


@dataclass
class Problem:
    """A checked empirical-NTK problem.

    trainable: name -> value (detached) of the parameters Theta differentiates with respect to.
    frozen: name -> value of the other parameters and of the buffers (BatchNorm statistics ...).
    X: (N, ...) and Y: (M, ...) on the model's device (Y is None for the symmetric Gram of X).
    n_outputs: K, the number of outputs per sample (the model's output flattened per sample).
    activations: the number of values a forward pass of one sample produces (summed over modules).
    """

    model: nn.Module
    trainable: dict[str, torch.Tensor]
    frozen: dict[str, torch.Tensor]
    X: torch.Tensor
    Y: torch.Tensor | None
    n_outputs: int
    activations: int
    mode: str
    plan: Any = None  # the structured path's plan, once made (`plan.make_plan`)
    jacobian_way: str | None = None  # how per-sample Jacobians are formed, once found (`generic.jacobian_way`)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.trainable.values())

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.trainable.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self.trainable.values())).device

    @property
    def itemsize(self) -> int:
        return torch.finfo(self.dtype).bits // 8

    @property
    def cols(self) -> torch.Tensor:
        return self.X if self.Y is None else self.Y

    def all_values(self, trainable: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Every parameter and buffer, for `torch.func.functional_call`."""
        return {**self.frozen, **(self.trainable if trainable is None else trainable)}


def call(model: nn.Module, values: dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], ...],
         args: tuple) -> torch.Tensor:
    """`torch.func.functional_call`, also for a module registered twice in the model.

    Parameters shared by different modules are tied (both uses get the new value); but for one
    module object used twice, torch's tying leaves the module's parameters replaced by plain
    tensors after the call, so there the replacement on the object itself covers both uses.
    """
    repeated = sum(1 for _ in model.named_modules(remove_duplicate=False)) != sum(1 for _ in model.modules())
    return functional_call(model, values, args, tie_weights=not repeated)


# ------------------------------------------------------------------------------- checking
def model_values(model: nn.Module, params: Mapping[str, torch.Tensor] | None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trainable, frozen): the model's parameter values, with `params` overriding some of them.

    Theta sums over the parameters that require a gradient in the model; `params` only changes
    where it is evaluated (keys as in `model.named_parameters()`).
    """
    named = dict(model.named_parameters())
    overrides: dict[str, torch.Tensor] = {}
    if params is not None:
        if not isinstance(params, Mapping):
            raise TypeError("params must be a mapping from parameter names to tensors, "
                            f"got {type(params).__name__}")
        unknown = sorted(set(params) - set(named))
        if unknown:
            raise ValueError(f"params has names the model does not have: {unknown}; "
                             f"expected names from model.named_parameters(), e.g. {list(named)[:4]}")
        for name, value in params.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"params[{name!r}] must be a tensor, got {type(value).__name__}")
            if value.shape != named[name].shape:
                raise ValueError(f"params[{name!r}] must have shape {tuple(named[name].shape)}, "
                                 f"got {tuple(value.shape)}")
            overrides[name] = value.to(named[name])
    trainable = {n: overrides.get(n, p).detach() for n, p in named.items() if p.requires_grad}
    if not trainable:
        raise ValueError("model has no trainable parameters (none requires a gradient), so its NTK is zero; "
                         "call requires_grad_(True) on the parameters the NTK should differentiate")
    dtypes = {p.dtype for p in trainable.values()}
    if any(dtype.is_complex for dtype in dtypes):
        raise TypeError(f"complex parameters are not supported (got {sorted(map(str, dtypes))}): the NTK here is "
                        "sum_p dF/dtheta_p dF/dtheta_p over real parameters; split a complex parameter into its real "
                        "and imaginary parts")
    if len(dtypes) > 1 or not next(iter(dtypes)).is_floating_point:
        raise TypeError("the trainable parameters must share one floating dtype, "
                        f"got {sorted(map(str, dtypes))}")
    frozen = {n: overrides.get(n, p).detach() for n, p in named.items() if not p.requires_grad}
    frozen.update(dict(model.named_buffers()))
    return trainable, frozen


def check_deterministic(model: nn.Module) -> None:
    """Batch statistics and dropout make F random or batch-dependent: Theta is then undefined."""
    for name, module in model.named_modules():
        batch_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        dropout = isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0
        if module.training and (batch_norm or dropout):
            kind = "BatchNorm (batch statistics)" if batch_norm else "Dropout (random)"
            raise ValueError(f"model module {name!r} is a {kind} layer in training mode, so each output "
                             "depends on the batch or on chance and the NTK is not defined; the NTK is taken "
                             "in eval mode: call model.eval() first")
        if batch_norm and module.running_mean is None:
            raise ValueError(f"model module {name!r} is a BatchNorm layer without running statistics "
                             "(track_running_stats=False), so it normalizes by the batch's statistics even in eval "
                             "mode and the NTK is not defined")


def as_inputs(value: object, name: str, like: torch.Tensor, ids: bool = False) -> tuple[torch.Tensor, bool]:
    """Inputs (N, ...) on `like`'s device; floating ones in its dtype, integer tensors (token ids) kept, and
    integer NumPy arrays too when `ids` (the model has an nn.Embedding; else they are numbers, cast).

    A 1-D input is one sample; N = 0 samples are allowed (an empty batch). Returns the tensor and whether
    the caller gave NumPy.
    """
    if ids and isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.integer):
        value = torch.from_numpy(value.astype(np.int64))  # token ids, as for an integer tensor
        tensor, numpy_in = value.to(like.device), True
    elif isinstance(value, torch.Tensor) and not value.is_floating_point() and not value.is_complex() \
            and value.dtype != torch.bool:
        tensor, numpy_in = value.to(like.device), False
    else:
        tensor, numpy_in = as_tensor(value, name)
        tensor = tensor.to(dtype=like.dtype, device=like.device)
    if tensor.ndim == 0:
        raise ValueError(f"{name} must have a batch dimension first, got a scalar")
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    return tensor, numpy_in


def takes_ids(model: nn.Module) -> bool:
    """Whether integer NumPy inputs are token ids (the model has an nn.Embedding), kept as int64 like integer tensors;
    otherwise they are numbers, cast to the parameters' dtype."""
    return any(isinstance(m, nn.Embedding) for m in model.modules())


def probe(model: nn.Module, values: dict[str, torch.Tensor], x: torch.Tensor,
          trainable: Collection[str] = ()) -> tuple[int, int]:
    """Run one sample through the model: (K outputs, number of values its modules produce).

    The sample runs twice: without gradients, and with gradients enabled and the `trainable` values requiring
    one, as the methods' derivatives run the model; so `check_buffers_fixed` also sees buffers written only in
    one of the two (`if torch.is_grad_enabled(): ...`). A model that rejects the input shape fails here with a
    ValueError that says so.
    """
    sizes: list[int] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            out = call(model, values, (x,))
        for handle in handles:
            handle.remove()
        handles.clear()  # the activations are counted once
        graded = {n: v.detach().requires_grad_(True) if n in trainable else v for n, v in values.items()}
        with torch.enable_grad():
            call(model, graded, (x,))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"the model rejected inputs of shape {tuple(x.shape)} (one sample of X, batch "
                         f"dimension first): {exc}") from exc
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(out, torch.Tensor):
        if isinstance(model, FunctionModel):
            raise TypeError(f"the function of the parameters must return one tensor (B, ...), got "
                            f"{type(out).__name__}")
        hint = (" (select one with output=: an index, a key, or a function of the output)"
                if isinstance(out, (tuple, list, dict)) else "")
        raise TypeError(f"the model must return one tensor, got {type(out).__name__}{hint}")
    if out.ndim == 0 or out.shape[0] != 1:
        raise ValueError(f"the model must keep the batch dimension first: one sample gave output shape "
                         f"{tuple(out.shape)}")
    if not out.is_floating_point():
        raise TypeError(f"the model's output must be floating, got {out.dtype}")
    n_outputs = out[0].numel()
    return n_outputs, max(sum(sizes), n_outputs)


def count_flops(problem: Problem) -> int:
    """Forward floating-point operations for one sample (FlopCounterMode; 2 P when it counts none)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call(problem.model, problem.all_values(), (problem.X[:1],))
    return int(counter.get_total_flops()) or 2 * problem.n_params


def check_buffers_fixed(model: nn.Module, before: dict[str, torch.Tensor], refuse: bool = True) -> None:
    """Buffers the forward pass wrote (running statistics, counters) make F change from call to call:
    restore them from `before` (their values before the probe) and refuse (only restore when not `refuse`)."""
    buffers = dict(model.named_buffers())
    changed = [n for n, b in buffers.items() if not torch.equal(b, before[n])]
    with torch.no_grad():  # a buffer written from a value with a graph (the probe with gradients on) gets none
        for name in changed:
            buffers[name].copy_(before[name])
    if changed and refuse:
        raise ValueError(f"the model's forward pass changes its buffers {changed}, so it is a different function "
                         "at every call and its NTK is not defined; put those modules in eval mode or stop "
                         "them updating in forward")


def make_problem(model: nn.Module | Callable, X: object, Y: object, mode: str,
                 params: Mapping[str, torch.Tensor] | None, output: Selector = None) -> tuple[Problem, bool]:
    """Check everything once; returns the problem and whether the output should be NumPy."""
    model, params = as_model(model, params, output)
    trainable, frozen = model_values(model, params)
    check_deterministic(model)
    like = next(iter(trainable.values()))
    ids = takes_ids(model)
    Xt, numpy_in = as_inputs(X, "X", like, ids)
    Yt = None
    if Y is not None:
        Yt, _ = as_inputs(Y, "Y", like, ids)
        if Yt.shape[1:] != Xt.shape[1:]:
            raise ValueError(f"X and Y must have the same sample shape, got {tuple(Xt.shape[1:])} "
                             f"and {tuple(Yt.shape[1:])}")
    sample = Xt[:1] if len(Xt) else (Yt[:1] if Yt is not None and len(Yt) else Xt.new_zeros((1, *Xt.shape[1:])))
    before = {n: b.clone() for n, b in model.named_buffers()}
    try:
        n_outputs, activations = probe(model, {**frozen, **trainable}, sample, trainable)
    except (ValueError, TypeError):
        check_buffers_fixed(model, before, refuse=False)  # restored; the probe's error says what is wrong
        raise
    check_buffers_fixed(model, before)
    return Problem(model, trainable, frozen, Xt, Yt, n_outputs, activations, mode), numpy_in


# ----------------------------------------------------------------------------- the modes
def output_shape(n: int, m: int, k: int, mode: str) -> tuple[int, ...]:
    return {"full": (n, m, k, k), "trace": (n, m), "diagonal": (n, m, k)}[mode]


def contract(G1: torch.Tensor, G2: torch.Tensor, mode: str, n_outputs: int | None = None) -> torch.Tensor:
    """sum_p G1[i, k, p] G2[j, k', p] arranged for `mode`.

    G1 (B1, K, P), G2 (B2, K, P): per-sample derivatives of the K outputs with respect to P
    numbers. full -> (B1, B2, K, K); trace -> (B1, B2), the mean over k = k'; diagonal ->
    (B1, B2, K), k = k'. `n_outputs` is the K of the mean in trace mode (default G1's K).
    """
    b1, k, p = G1.shape
    b2 = G2.shape[0]
    if mode == "full":
        A = G1.reshape(b1 * k, p)
        product = self_gram(A) if G1 is G2 else A @ G2.reshape(b2 * k, p).T
        return product.reshape(b1, k, b2, k).permute(0, 2, 1, 3)
    if mode == "trace":
        A = G1.reshape(b1, k * p)
        return (self_gram(A) if G1 is G2 else A @ G2.reshape(b2, k * p).T) / (n_outputs or k)
    return torch.bmm(G1.transpose(0, 1), G2.permute(1, 2, 0)).permute(1, 2, 0)


def self_gram(A: torch.Tensor, smallest: int = 64) -> torch.Tensor:
    """A A^T (rows, rows) from its two diagonal halves and one off-diagonal product (the other is its
    transpose), recursively: about half the products of one A @ A.T for many rows."""
    n = A.shape[0]
    if n < 2 * smallest:
        return A @ A.T
    h = n // 2
    out = A.new_empty(n, n)
    out[:h, :h] = self_gram(A[:h], smallest)
    out[h:, h:] = self_gram(A[h:], smallest)
    out[:h, h:] = A[:h] @ A[h:].T
    out[h:, :h] = out[:h, h:].T
    return out


def reduce_full(tile: torch.Tensor, mode: str) -> torch.Tensor:
    """A (B1, B2, K, K) tile in the shape of `mode`."""
    if mode == "full":
        return tile
    diagonal = torch.diagonal(tile, dim1=2, dim2=3)
    return diagonal.mean(-1) if mode == "trace" else diagonal


def transpose_tile(tile: torch.Tensor, mode: str) -> torch.Tensor:
    """Theta(Y, X) from Theta(X, Y): Theta_{k k'}(y, x) = Theta_{k' k}(x, y)."""
    return {"full": lambda t: t.permute(1, 0, 3, 2), "trace": lambda t: t.T,
            "diagonal": lambda t: t.permute(1, 0, 2)}[mode](tile)
