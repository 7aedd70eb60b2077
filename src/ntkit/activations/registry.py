"""The one table of named nonlinearities: every name, short form and torch translation is read from it.

    register("erf", Erf, layer="Erf", doc="erf(x) (closed form).")            # in the module defining Erf
    register("tanh", quadrature(torch.tanh, "tanh"), closed_form=False, layer="Tanh", torch_module=nn.Tanh)

What reads it:
    `ntkit.activations.get_activation("erf")`    the maps (`Nonlinearity`) of a name, or of an alias;
    `ntkit.layers` short forms                   nk.Erf(), nk.Tanh(), ... (one class per entry with `layer`);
    `ntkit.layers.infinite`                      nn.Tanh() -> nk.Tanh() (entries with `torch_module`);
    `names()`                                    the names every `activation=` argument accepts (the estimators).

A new nonlinearity is one `register` call beside its class; an entry registered again under its name replaces the
first (a faster rule for a quadrature activation, say).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import Nonlinearity

#: name -> entry, in registration order
REGISTRY: dict[str, Entry] = {}
#: alias -> name
ALIASES: dict[str, str] = {}


@dataclass(frozen=True)
class Entry:
    """One named nonlinearity.

    Attributes:
        make: the factory of its maps, called with the settings `params` as keywords for a closed form, and with
            `degree` too otherwise.
        closed_form: whether the maps are exact (else by quadrature of `degree` radial nodes).
        layer: the class name of its short form in `ntkit.layers` (``nk.<layer>()``), or None.
        params: the keyword settings of `make` that the short form takes too (leaky_relu: "negative_slope").
        torch_module: the torch module that `nk.infinite` translates to this entry, or None.
        from_torch: the settings of such a module as `params` (a dict), or None where the module's settings are
            not this entry's (then `nk.infinite` integrates the module itself by quadrature); None: always {}.
    """

    name: str
    make: Callable[..., Nonlinearity]
    closed_form: bool = True
    layer: str | None = None
    params: tuple[str, ...] = ()
    torch_module: type | None = None
    from_torch: Callable[[Any], dict | None] | None = None
    aliases: tuple[str, ...] = ()
    doc: str = ""

    def build(self, degree: int, /, **params: Any) -> Nonlinearity:
        """The maps, with `degree` radial nodes where they are by quadrature (positional: a closed form's own
        setting may be named degree, as monomial's)."""
        return self.make(**params) if self.closed_form else self.make(degree=degree, **params)

    def torch_params(self, module: Any) -> dict | None:
        """The settings of a `torch_module` instance, or None where they are not this entry's."""
        return {} if self.from_torch is None else self.from_torch(module)


def register(name: str, make: Callable[..., Nonlinearity], *, closed_form: bool = True, layer: str | None = None,
             params: tuple[str, ...] = (), torch_module: type | None = None,
             from_torch: Callable[[Any], dict | None] | None = None, aliases: tuple[str, ...] = (),
             doc: str = "") -> Entry:
    """Add (or replace) the nonlinearity `name` (lower case); returns its entry. See `Entry` for the fields."""
    if not isinstance(name, str) or name != name.lower() or not name:
        raise ValueError(f"name must be a non-empty lower-case string, got {name!r}")
    if not callable(make):
        raise TypeError(f"make must be callable, got {type(make).__name__}")
    entry = Entry(name, make, closed_form, layer, tuple(params), torch_module, from_torch, tuple(aliases), doc)
    REGISTRY[name] = entry
    for alias in entry.aliases:
        ALIASES[alias] = name
    return entry


def lookup(name: str) -> Entry | None:
    """The entry of a name or alias (any case), or None."""
    key = name.lower()
    return REGISTRY.get(ALIASES.get(key, key))


def names() -> tuple[str, ...]:
    """Every name and alias that `get_activation` (and each `activation=` argument) accepts, sorted."""
    return tuple(sorted({*REGISTRY, *ALIASES}))


def quadrature(fn: Callable, name: str) -> Callable[..., Nonlinearity]:
    """The factory of a named activation by quadrature of the torch function `fn`."""

    def make(degree: int) -> Nonlinearity:
        from .quadrature import Quadrature

        return Quadrature(fn, name=name, degree=degree)

    return make
