"""Idioms: plaintext subgraphs that become one protocol call (GeLU, LayerNorm, ...).

An idiom is one declaration in one module of this folder: its name, the patterns that match it
(`rewrites.patterns`), the op types its output node can have, when a match applies, how its
secure value is built, and the error hints for its inner ops when they are found outside it.
Adding an idiom (RMSNorm, SiLU as x*sigmoid(x), rotary, ...) is one new file that calls
`register`; `all_idioms()` imports every module here.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Callable, Mapping

from tf_puma.rewrites.patterns import Bindings, Pattern


def _always(graph, bindings: Bindings) -> bool:  # noqa: ARG001 - the default check
    return True


@dataclasses.dataclass(frozen=True)
class Domain:
    """`lo <= measure(values) <= hi`, where values are plaintext values of the bindings."""
    quantity: str
    lo: float
    hi: float
    measure: Callable


@dataclasses.dataclass(frozen=True)
class Idiom:
    """One plaintext idiom and its secure build.

    `build(ctx, bindings)` returns the idiom's output as a Shared (ctx: rewrites.program's
    BuildContext); `applies(graph, bindings)` refuses matches the build cannot serve (the
    matched input must be secret in any case); `hints` maps an inner op type to the sentence a
    conversion error gives when that op appears outside the idiom.
    """
    name: str
    patterns: tuple[Pattern, ...]
    roots: tuple[str, ...]
    build: Callable
    applies: Callable = _always
    hints: Mapping[str, str] = dataclasses.field(default_factory=dict)
    domain: Domain | None = None


_REGISTRY: dict[str, Idiom] = {}


def register(idiom: Idiom) -> Idiom:
    if idiom.name in _REGISTRY:
        raise ValueError(f"idiom {idiom.name!r} is registered twice")
    for pattern in idiom.patterns:
        for option in getattr(pattern, "patterns", (pattern,)):
            op_type = getattr(option, "op_type", None)
            if op_type is not None and op_type not in idiom.roots:
                raise ValueError(f"idiom {idiom.name!r}: a pattern's root {op_type} is not in "
                                 f"its roots {idiom.roots}")
    _REGISTRY[idiom.name] = idiom
    return idiom


def all_idioms() -> tuple[Idiom, ...]:
    """Every idiom of this folder, in registration (file name) order."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")
    return tuple(_REGISTRY.values())


def hints() -> dict[str, str]:
    out: dict[str, str] = {}
    for idiom in all_idioms():
        out.update(idiom.hints)
    return out
