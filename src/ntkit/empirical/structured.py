"""The exact fast path for fully-connected stacks: per-layer Gram products, no Jacobian.

For an nn.Sequential of affine layers z_l = w_l a_l W_l^T + b_l beta_l (`NTKLinear`, or
`nn.Linear` with w_l = b_l = 1) and elementwise activations, the derivatives of output k are
dF_k/dW_l = w_l g_lk a_l^T and dF_k/dbeta_l = b_l g_lk, where a_l(x) is the layer's input and
g_lk(x) = dF_k/dz_l the gradient back-propagated to its output. Summing over the parameters
(the paper's Theta = sum_p dF/dtheta_p (x) dF/dtheta_p):

    Theta_{k k'}(x, y) = sum_l [ w_l^2 a_l(x).a_l(y) + b_l^2 ] * g_lk(x).g_lk'(y)

so the cost is N^2 times the sum of the widths, not N^2 times the number of parameters.
g is propagated exactly: g_{l-1} = sigma'(z_{l-1}) * (w_l g_l W_l) (the chain rule of Section 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .. import memory
from ..nets import ActivationLayer, NTKLinear
from .blocking import fill
from .common import Problem, contract, working_memory
from .generic import largest_fitting

#: Parameter-free torch modules that act elementwise: their derivative is taken by autograd on a sum.
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
               nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
               nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.LogSigmoid, nn.Threshold, nn.Identity)


class NotStructured(ValueError):
    """The model is not a fully-connected stack the structured path can take."""


@dataclass
class Affine:
    """One affine layer, its multipliers, and the elementwise modules that follow it."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_mult: float
    bias_mult: float
    weight_trainable: bool
    bias_trainable: bool
    after: list[nn.Module] = field(default_factory=list)


@dataclass
class Stack:
    prefix: list[nn.Module]  # parameter-free modules before the first affine layer: a fixed map of x
    layers: list[Affine]


@dataclass
class Features:
    """For a block of B samples: the layer inputs a_l (B, n_in) and output gradients g_l (B, K, n_out)."""

    inputs: list[torch.Tensor]
    grads: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.inputs, *self.grads))


def _flatten(module: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    """The modules of nested nn.Sequential containers in call order, with their qualified names."""
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        return [item for child_name, child in module._modules.items() if child is not None  # repeats kept
                for item in _flatten(child, f"{name}.{child_name}" if name else child_name)]
    return [(name, module)]


def _is_elementwise(module: nn.Module) -> bool:
    if isinstance(module, ActivationLayer):
        return True
    if isinstance(module, nn.Dropout) and (module.p == 0 or not module.training):
        return True
    return type(module) in ELEMENTWISE


def parse(problem: Problem) -> Stack:
    """The model as a `Stack`, or NotStructured saying which module is in the way."""
    prefix: list[nn.Module] = []
    layers: list[Affine] = []
    seen: set[int] = set()
    for name, module in _flatten(problem.model, ""):
        if id(module) in seen and next(module.parameters(), None) is not None:
            raise NotStructured(f"module {name!r} appears twice in the stack (shared weights)")
        seen.add(id(module))
        if type(module) in (nn.Linear, NTKLinear):
            if isinstance(module, NTKLinear):
                w_mult, b_mult = float(module.weight_multiplier), float(module.bias_multiplier)
            else:
                w_mult, b_mult = 1.0, 1.0
            values, prefix_ = problem.all_values(), f"{name}." if name else ""
            weight_name, bias_name = f"{prefix_}weight", f"{prefix_}bias"
            if weight_name not in values or (module.bias is not None and bias_name not in values):
                raise NotStructured(f"module {name!r} shares a parameter with another layer")
            bias = values[bias_name] if module.bias is not None else None
            layers.append(Affine(values[weight_name], bias, w_mult, b_mult,
                                 weight_name in problem.trainable, bias_name in problem.trainable))
        elif layers and _is_elementwise(module):
            layers[-1].after.append(module)
        elif not layers and next(module.parameters(), None) is None:
            prefix.append(module)
        else:
            raise NotStructured(f"module {name!r} ({type(module).__name__}) is not a linear layer or an "
                                "elementwise activation of an nn.Sequential")
    if not layers:
        raise NotStructured("the model has no nn.Linear or NTKLinear layer in an nn.Sequential")
    return Stack(prefix, layers)


def _apply_prefix(stack: Stack, X: torch.Tensor) -> torch.Tensor:
    for module in stack.prefix:
        X = module(X)
    return X


def check_inputs(stack: Stack, X: torch.Tensor) -> None:
    first = stack.layers[0].weight
    with torch.no_grad():
        shape = _apply_prefix(stack, X[:1]).shape
    if len(shape) != 2 or shape[1] != first.shape[1]:
        raise NotStructured(f"the first linear layer gets inputs of shape {tuple(shape)}; the structured path "
                            f"needs one vector of {first.shape[1]} features per sample")


def _derivative(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """sigma'(z) elementwise: the activation's own derivative, else autograd on sum(sigma(z))."""
    if isinstance(module, ActivationLayer):
        return module.activation.derivative(z)
    if isinstance(module, (nn.Identity, nn.Dropout)):
        return torch.ones_like(z)
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(module(leaf).sum(), leaf)
    return grad


@torch.no_grad()
def forward(stack: Stack, X: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None], torch.Tensor]:
    """(a_l for each layer, the product of sigma' after each layer or None, the output)."""
    a = _apply_prefix(stack, X)
    inputs, derivatives = [], []
    for layer in stack.layers:
        inputs.append(a)
        if layer.bias is None:  # z = w a W^T + b beta
            z = torch.mm(a, layer.weight.T)
            z = z.mul_(layer.weight_mult) if layer.weight_mult != 1.0 else z
        else:
            z = torch.addmm(layer.bias, a, layer.weight.T, beta=layer.bias_mult, alpha=layer.weight_mult)
        slope = None  # the product of sigma' along the elementwise modules after the layer
        for module in layer.after:
            d = _derivative(module, z)
            slope = d if slope is None else slope * d
            z = module(z)
        derivatives.append(slope)
        a = z
    return inputs, derivatives, a


@torch.no_grad()
def features(stack: Stack, X: torch.Tensor, n_outputs: int) -> Features:
    """The forward pass storing each layer's input a_l, then the exact backward pass of every output."""
    inputs, derivatives, a = forward(stack, X)
    if a.shape[1] != n_outputs:
        raise NotStructured(f"the stack has {a.shape[1]} outputs per sample, the model {n_outputs}")

    batch = X.shape[0]
    eye = torch.eye(n_outputs, dtype=a.dtype, device=a.device)
    g = eye.expand(batch, n_outputs, n_outputs)  # dF_k / d(output_j) = delta_kj
    grads: list[torch.Tensor] = []
    for index in range(len(stack.layers) - 1, -1, -1):
        layer, slope = stack.layers[index], derivatives[index]
        if slope is not None:
            g = g * slope[:, None, :]
        grads.append(g)
        if index > 0:  # g at the layer's input: w_l g_l W_l
            flat = torch.mm(g.reshape(-1, g.shape[2]), layer.weight)
            if layer.weight_mult != 1.0:
                flat.mul_(layer.weight_mult)
            g = flat.reshape(batch, n_outputs, -1)
    grads.reverse()
    return Features(inputs, grads)


def tile(stack: Stack, fx: Features, fy: Features, mode: str, n_outputs: int) -> torch.Tensor:
    """Theta(x, y) = sum_l [ w_l^2 a_l(x).a_l(y) + b_l^2 ] * g_l(x).g_l(y) for a pair of blocks."""
    theta = None
    for layer, ax, ay, gx, gy in zip(stack.layers, fx.inputs, fy.inputs, fx.grads, fy.grads, strict=True):
        bias_term = layer.bias_mult**2 if layer.bias is not None and layer.bias_trainable else 0.0
        if not layer.weight_trainable and bias_term == 0.0:
            continue
        gram_g = contract(gx, gy, mode, n_outputs)
        if layer.weight_trainable:
            gram_a = ax @ ay.T
            gram_a.mul_(layer.weight_mult**2).add_(bias_term)
            gram_g.mul_(gram_a.reshape(gram_a.shape + (1,) * (gram_g.ndim - 2)))
        else:
            gram_g.mul_(bias_term)
        theta = gram_g if theta is None else theta.add_(gram_g)
    if theta is None:  # no layer has a trainable parameter (cannot happen after model_values' check)
        raise NotStructured("no layer of the stack has a trainable parameter")
    return theta


def block_need(stack: Stack, problem: Problem, size: int) -> float:
    """Bytes for blocks of `size` samples: the features of a row and a column block with the forward pass's
    derivatives and one backward temporary (per layer n_in + n_out + 2 K n_out per sample), and a tile."""
    k, itemsize = problem.n_outputs, problem.itemsize
    per_sample = sum(layer.weight.shape[1] + (1 + 2 * k) * layer.weight.shape[0] for layer in stack.layers)
    per_pair = 3 * (k * k if problem.mode == "full" else k)
    return (2 * size * per_sample + size * size * per_pair) * itemsize


def plan_block(stack: Stack, problem: Problem, block_size: int | None) -> int:
    """Samples per block such that the features and one tile fit the working memory; a MemoryError before
    any allocation, naming the budget and what fits, when they cannot."""
    budget = working_memory(problem.device)
    n = max(problem.X.shape[0], problem.cols.shape[0])
    fits = largest_fitting(lambda b: block_need(stack, problem, b), budget, n)
    size = block_size or fits
    if size and block_need(stack, problem, size) <= budget:
        return size
    hint = f"pass block_size={fits} or less" if block_size is not None and fits else \
        f"pass memory={int(block_need(stack, problem, 1)) + 1} or more"
    raise MemoryError(f"the structured path needs about {memory.format_bytes(block_need(stack, problem, max(size, 1)))}"
                      f" for blocks of {max(size, 1)} samples ({problem.n_outputs} outputs), more than "
                      f"memory={budget:,} bytes ({memory.format_bytes(budget)}): {hint}")


class _FeatureCache:
    """Features of each block, kept while they fit the working memory, else recomputed."""

    def __init__(self, stack: Stack, problem: Problem, budget: int):
        self.stack, self.problem, self.budget = stack, problem, budget
        self.store: dict[tuple[str, int], Features] = {}
        self.used = 0

    def get(self, which: str, rows: slice) -> Features:
        """Features of X[rows] ("X", the current row block) or of the column inputs ("Y")."""
        key = (which, rows.start)
        if key in self.store:
            return self.store[key]
        data = self.problem.X if which == "X" else self.problem.cols
        result = features(self.stack, data[rows], self.problem.n_outputs)
        if which == "X" or self.used + result.nbytes <= self.budget:
            if which == "X":  # keep only the current row block
                self.used -= sum(f.nbytes for key_, f in self.store.items() if key_[0] == "X")
                self.store = {key_: f for key_, f in self.store.items() if key_[0] != "X"}
            self.store[key] = result
            self.used += result.nbytes
        return result


def structured_ntk(problem: Problem, block_size: int | None, show: bool | None) -> torch.Tensor:
    """Theta for the whole problem by the structured path, block pair by block pair."""
    stack = parse(problem)
    check_inputs(stack, problem.X)
    size = plan_block(stack, problem, block_size)
    cache = _FeatureCache(stack, problem, working_memory(problem.device) - int(block_need(stack, problem, size)))
    symmetric = problem.Y is None

    def tile_fn(rows: slice, cols: slice) -> torch.Tensor:
        fx = cache.get("X", rows)
        fy = fx if symmetric and rows == cols else cache.get("Y", cols)
        return tile(stack, fx, fy, problem.mode, problem.n_outputs)

    return fill(tile_fn, problem, size, "empirical NTK (structured)", show)
