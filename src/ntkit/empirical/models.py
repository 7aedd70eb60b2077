"""What the empirical NTK differentiates: a module, a function f(params, X) of named parameters, one output.

`as_model` turns each into one nn.Module whose trainable parameters are the ones Theta sums over, so every
method (structured, jacobian, ntk_vp) sees a module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

#: Which output of a model returning a tuple, list or dict to take: an index, a key, or a function.
Selector = int | str | Callable[[Any], torch.Tensor] | None


@contextmanager
def no_fused_attention() -> Iterator[None]:
    """torch's fused fast path of nn.TransformerEncoderLayer / nn.MultiheadAttention off: it has no forward-mode
    derivative and it bypasses the hooks of the layers inside it; the plain path computes the same function."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


class FunctionModel(nn.Module):
    """A function f(params, X) of named parameter tensors and a batch, as a module with those parameters."""

    def __init__(self, fn: Callable, params: Mapping[str, torch.Tensor]):
        super().__init__()
        self.fn, self.names = fn, list(params)
        for index, name in enumerate(self.names):
            value = params[name]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"params[{name!r}] must be a tensor, got {type(value).__name__}")
            self.register_parameter(f"p{index}", nn.Parameter(value.detach(), requires_grad=True))

    def forward(self, x: torch.Tensor) -> Any:
        return self.fn({name: getattr(self, f"p{index}") for index, name in enumerate(self.names)}, x)


class Selected(nn.Module):
    """One output of a model that returns a tuple, list or dict."""

    def __init__(self, model: nn.Module, output: Selector):
        super().__init__()
        self.model, self.output = model, output

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(x)
        if callable(self.output):
            return self.output(out)
        try:
            return out[self.output]
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"output={self.output!r} does not select an output of the model's "
                             f"{type(out).__name__}: {exc}") from None


def as_model(model: object, params: Mapping[str, torch.Tensor] | None, output: Selector
             ) -> tuple[nn.Module, Mapping[str, torch.Tensor] | None]:
    """The module to differentiate, and the `params` overrides in its names."""
    if not isinstance(model, nn.Module):
        if not callable(model):
            raise TypeError(f"model must be a torch.nn.Module or a function f(params, X), got {type(model).__name__}")
        if not isinstance(params, Mapping) or not params:
            raise TypeError("model must be a torch.nn.Module, or a function f(params, X) given with params= (a "
                            "non-empty dict of the parameter tensors it takes)")
        model, params = FunctionModel(model, params), None
    if output is not None:
        if not (isinstance(output, (int, str)) or callable(output)) or isinstance(output, bool):
            raise TypeError(f"output must be an index, a key or a function, got {type(output).__name__}")
        model = Selected(model, output)
        params = None if params is None else {f"model.{n}": v for n, v in params.items()}
    return model, params
