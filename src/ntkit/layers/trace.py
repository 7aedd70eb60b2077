"""`infinite` for torch models that branch: the module traced by torch.fx, its graph turned into layers.

    class Block(nn.Module):
        def forward(self, x):
            return x + self.conv2(torch.relu(self.conv1(x)))          # a residual addition

    class Net(nn.Module):
        def forward(self, x):
            h = self.stem(x)
            h = torch.cat([self.a(h), self.b(h)], dim=1)                # a concatenation along channels
            return self.head(self.block(h))

    arch = nk.infinite(Net())       # Sequential(..., Parallel(..., combine="concat", proportions=...), Residual(...))

Each module the graph calls is translated as `nk.infinite` translates the modules of an nn.Sequential; the functions
and methods torch.relu / F.relu / .relu(), torch.flatten / .flatten(1) are layers too. Where values merge, a + b (or
torch.add) is a sum, torch.cat(..., dim=1) a concatenation along channels (its proportions from the channel counts of
the branches' last weight layers) and a * b a product; each branch runs from the value where the inputs fork. Anything
else (another function, a constant operand, a concatenation along another axis) raises a LayerError naming the node.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from .activation import SHORT_FORMS
from .base import Layer, LayerError
from .flatten import Flatten
from .infinite_attention import traced_attention_refusal
from .parallel import Parallel
from .residual import Residual

RELU = {torch.relu, F.relu, "relu"}
FLATTEN = {torch.flatten, "flatten"}
MERGES = {operator.add: "sum", torch.add: "sum", "add": "sum", operator.mul: "product", torch.mul: "product",
          "mul": "product", torch.cat: "concat", torch.concat: "concat"}


def traced(module: nn.Module, one: Callable[[nn.Module, str], Layer | None]) -> list[Layer]:
    """The layers of `module` from its torch.fx graph; `one(submodule, where)` translates a called module."""
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception as error:     # data-dependent control flow and the like
        raise LayerError(f"infinite: {type(module).__name__} cannot be traced by torch.fx ({error}); write it as an "
                         f"nn.Sequential or as ntkit layers") from error
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    outputs = [n for n in nodes if n.op == "output"]
    if len(inputs) != 1:
        raise LayerError(f"infinite: {type(module).__name__}.forward takes {len(inputs)} inputs; one tensor maps")
    calls = [n.target for n in nodes if n.op == "call_module"]
    for target in dict.fromkeys(calls):
        if calls.count(target) > 1 and any(True for _ in module.get_submodule(target).parameters()):
            raise LayerError(f"infinite: module {target} ({type(module.get_submodule(target)).__name__}) is called "
                             f"{calls.count(target)} times: its weights are shared, so the values are not independent "
                             f"branches in the limit; give each call its own module")
    return _Translator(module, one).path(outputs[0].args[0], inputs[0])


class _Translator:
    def __init__(self, module: nn.Module, one: Callable[[nn.Module, str], Layer | None]):
        self.module, self.one = module, one
        self.spines: dict[fx.Node, list[fx.Node]] = {}
        self.out_channels: dict[int, int] = {}      # id of a translated weight layer -> its torch module's outputs

    # ------------------------------------------------------------------------------------- the graph
    def sources(self, node: fx.Node) -> list[fx.Node]:
        """The values a node reads: its tensor arguments (a merge: several)."""
        if self.merge(node) == "concat":
            values = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim not in (1, -3) or not all(isinstance(v, fx.Node) for v in values):
                raise LayerError(f"infinite: cannot translate {self.name(node)}: only a concatenation of computed "
                                 f"values along channels (dim=1) maps, got dim={dim}")
            return list(values)
        args = [a for a in node.args if isinstance(a, fx.Node)]
        if self.merge(node) is not None and (len(args) != len(node.args) or node.kwargs):
            raise LayerError(f"infinite: cannot translate {self.name(node)}: an operand is a constant or a keyword; "
                             f"only sums and products of computed values map")
        return args if self.merge(node) is not None else args[:1]

    def merge(self, node: fx.Node) -> str | None:
        if node.op in ("call_function", "call_method"):
            return MERGES.get(node.target)
        return None

    def spine(self, node: fx.Node) -> list[fx.Node]:
        """The node and the values before it, up to the input, passing each merge through the value its inputs fork
        from."""
        if node not in self.spines:
            if node.op == "placeholder":
                self.spines[node] = [node]
            else:
                self.spines[node] = [node, *self.spine(self.before(node))]
        return self.spines[node]

    def before(self, node: fx.Node) -> fx.Node:
        sources = self.sources(node)
        if not sources:
            raise LayerError(f"infinite: cannot translate {self.name(node)}: it reads no value of the input")
        return self.fork(sources) if self.merge(node) is not None else sources[0]

    def fork(self, sources: list[fx.Node]) -> fx.Node:
        """The last value the spines of `sources` share."""
        common = set(self.spine(sources[0]))
        for s in sources[1:]:
            common &= set(self.spine(s))
        return next(n for n in self.spine(sources[0]) if n in common)

    # ------------------------------------------------------------------------------------- the layers
    def path(self, node: fx.Node, stop: fx.Node) -> list[Layer]:
        """The layers from the value `stop` (excluded) to `node`."""
        if node is stop:
            return []
        if node.op == "placeholder":
            raise LayerError(f"infinite: the branches of {type(self.module).__name__} do not meet where they fork")
        kind = self.merge(node)
        if kind is None:
            layer = self.layer(node)
            return self.path(self.before(node), stop) + ([] if layer is None else [layer])
        sources = self.sources(node)
        fork = self.fork(sources)
        branches = [tuple(self.path(s, fork)) for s in sources]
        return self.path(fork, stop) + [self.combine(node, kind, branches)]

    def combine(self, node: fx.Node, kind: str, branches: list[tuple[Layer, ...]]) -> Layer:
        if kind == "sum" and len(branches) == 2 and not branches[0] and branches[1]:
            return Residual(*branches[1])
        if kind == "sum" and len(branches) == 2 and not branches[1] and branches[0]:
            return Residual(*branches[0])
        proportions = None
        if kind == "concat":
            counts = [self.channels(node, branch) for branch in branches]
            g = math.gcd(*counts)
            proportions = [c // g for c in counts]
        try:
            return Parallel(*branches, combine=kind, proportions=proportions)
        except LayerError as error:
            raise LayerError(f"infinite: cannot translate {self.name(node)}: {error}") from error

    def channels(self, node: fx.Node, branch: tuple[Layer, ...]) -> int:
        """The channel count of a concatenated branch: its last weight layer's, from the torch module."""
        for layer in reversed(branch):
            if id(layer) in self.out_channels:
                return self.out_channels[id(layer)]
        raise LayerError(f"infinite: cannot translate {self.name(node)}: each concatenated branch needs a Linear or "
                         f"Conv layer (its share of the channels must grow with the width)")

    def layer(self, node: fx.Node) -> Layer | None:
        if node.op == "call_module":
            m = self.module.get_submodule(node.target)
            layer = self.one(m, f"module {node.target} ({type(m).__name__})")
            outs = getattr(m, "out_channels", getattr(m, "out_features", None))
            if layer is not None and layer.weights and outs:
                self.out_channels[id(layer)] = outs
            return layer
        if node.target in RELU:
            return SHORT_FORMS["ReLU"]()
        if node.target in FLATTEN:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                raise LayerError(f"infinite: cannot translate {self.name(node)}: only flatten(x, 1) maps")
            return Flatten()
        if node.op == "call_method" and node.target in ("contiguous",):
            return None
        computed = sum(1 for a in node.args if isinstance(a, fx.Node) and a.op != "get_attr")
        if (refusal := traced_attention_refusal(self.name(node), node.target, computed)) is not None:
            raise LayerError(refusal)
        raise LayerError(f"infinite: cannot translate {self.name(node)}: no infinite-width counterpart (modules as "
                         f"for an nn.Sequential; functions relu, flatten(x, 1), a + b, a * b, torch.cat(..., dim=1))")

    def name(self, node: fx.Node) -> str:
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        return f"node {node.name} ({node.op} {target}) of {type(self.module).__name__}"
