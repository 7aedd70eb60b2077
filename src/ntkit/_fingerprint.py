"""Fingerprints of user callables: what a stored Gram's fingerprint needs to tell two functions apart.

A function's name says nothing about what it computes (two lambdas share the name "<lambda>"; a `def f` redefined
keeps its name), so a callable is fingerprinted by its code: its bytecode, constants (code objects of nested
functions included), the names it reads, its default arguments, the values in its closure, and the values of the
globals it reads that are plain data (numbers, strings, tuples of them) or functions (fingerprinted the same way).
Modules and builtins (C functions such as `torch.tanh`) are named by their qualified name: their code is the
installed library's. Anything else (a torch module with parameters, an object with state, a tensor) cannot be
fingerprinted: `fingerprint` then returns None, and a Gram store refuses the kernel until it is named
(`fingerprint=` on the activation, or a registered activation name).
"""

from __future__ import annotations

import hashlib
import types
from typing import Any

#: marks, inside an architecture's `describe()`, a part that could not be fingerprinted (see `unfingerprintable`)
UNFINGERPRINTABLE = "<cannot be fingerprinted"
PLAIN = (int, float, complex, str, bytes, bool, type(None))
#: packages whose functions are named, not read: their code is that of the installed version
LIBRARIES = {"torch", "numpy", "scipy", "math", "ntkit"}


class Unfingerprintable(Exception):
    """Raised inside `fingerprint` for a value it cannot describe."""


def fingerprint(fn: Any) -> str | None:
    """A SHA-256 hex digest of what `fn` computes (module docstring), or None when it cannot be fingerprinted."""
    try:
        text = _describe(fn, set())
    except (Unfingerprintable, RecursionError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def unfingerprintable(what: str) -> str:
    """The text an architecture's description carries for a part without fingerprint."""
    return f"{UNFINGERPRINTABLE}: {what}>"


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _describe(value: Any, seen: set[int]) -> str:
    """A text that changes whenever what `value` computes may change; raises Unfingerprintable."""
    if isinstance(value, PLAIN):
        return repr(value)
    if isinstance(value, (tuple, list, frozenset)):
        return f"{type(value).__name__}({', '.join(_describe(item, seen) for item in value)})"
    if isinstance(value, dict):
        return "dict(" + ", ".join(f"{key!r}: {_describe(item, seen)}" for key, item in sorted(
            value.items(), key=lambda kv: repr(kv[0]))) + ")"
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__}"
    if isinstance(value, (types.BuiltinFunctionType, types.BuiltinMethodType)) or type(value).__name__ in (
            "builtin_function_or_method", "method_descriptor", "wrapper_descriptor", "ufunc"):
        return f"builtin {_qualified(value)}"
    if isinstance(value, types.MethodType):
        return f"method {_describe(value.__func__, seen)} of {_describe(value.__self__, seen)}"
    if isinstance(value, types.FunctionType):
        if (value.__module__ or "").split(".")[0] in LIBRARIES:  # the installed library's code
            return f"library function {_qualified(value)}"
        return _function(value, seen)
    if isinstance(value, types.CodeType):
        return _code(value, seen)
    if isinstance(value, type):
        return f"class {_qualified(value)}"
    if _is_torch_module(value):
        return _module(value, seen)
    if hasattr(value, "__array__") and hasattr(value, "dtype") and hasattr(value, "shape"):  # tensors, arrays
        return _array(value)
    if isinstance(value, __import__("functools").partial):
        return f"partial({_describe(value.func, seen)}, {_describe(value.args, seen)}, " \
               f"{_describe(value.keywords, seen)})"
    raise Unfingerprintable(f"{type(value).__name__} object")


def _code(code: types.CodeType, seen: set[int]) -> str:
    consts = ", ".join(_code(c, seen) if isinstance(c, types.CodeType) else _describe(c, seen)
                       for c in code.co_consts)
    return f"code({code.co_code.hex()}; consts {consts}; names {code.co_names}; args {code.co_argcount})"


def _function(fn: types.FunctionType, seen: set[int]) -> str:
    if id(fn) in seen:  # recursion: already being described
        return f"function {fn.__qualname__} (recursive)"
    seen.add(id(fn))
    parts = [f"function {_code(fn.__code__, seen)}", f"defaults {_describe(fn.__defaults__, seen)}",
             f"kwdefaults {_describe(fn.__kwdefaults__ or {}, seen)}"]
    if fn.__closure__:
        cells = []
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__, strict=True):
            try:
                cells.append(f"{name}={_describe(cell.cell_contents, seen)}")
            except ValueError:  # an empty cell
                cells.append(f"{name}=<empty>")
        parts.append(f"closure {', '.join(cells)}")
    names = sorted(_global_names(fn.__code__))
    found = [f"{name}={_describe(fn.__globals__[name], seen)}" for name in names if name in fn.__globals__]
    parts.append(f"globals {', '.join(found)}")
    return "; ".join(parts)


def _global_names(code: types.CodeType) -> set[str]:
    """The names a code object (and the code of functions nested in it) may read as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _array(value: Any) -> str:
    """A tensor or array by its dtype, shape and the digest of its values."""
    import numpy as np

    array = np.ascontiguousarray(value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value))
    return f"array {array.dtype} {array.shape} {hashlib.sha256(array.view(np.uint8)).hexdigest()}"


def _is_torch_module(value: Any) -> bool:
    torch = __import__("sys").modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def _module(module: Any, seen: set[int]) -> str:
    """A torch module without parameters or buffers (an activation module: nn.Tanh(), nn.ELU(alpha=0.5)): its
    class (its forward's code, for classes outside torch) and its settings. Modules with state cannot be
    fingerprinted (their values change as they train)."""
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        raise Unfingerprintable(f"{type(module).__name__} module with parameters or buffers")
    cls = type(module)
    code = "" if cls.__module__.startswith("torch.") else f"; forward {_describe(cls.forward, seen)}"
    settings = {key: item for key, item in vars(module).items() if not key.startswith("_") and key != "training"}
    return f"module {_qualified(cls)}{code}; settings {_describe(settings, seen)}; children " \
           f"{_describe([child for child in module.children()], seen)}"
