"""Naming and selecting the layers (points of the network) to explain.

Names are those of ``model.named_modules()`` (as in torchvision's
``feature_extraction``), plus ``"input"`` for the image itself.  A selection
is a list of any of:

* a name (``"layer3.1.conv2"``, ``"input"``) or a glob pattern (``"layer?"``);
* a module object of the model;
* a module type (``nn.Conv2d``): every module of that type, in model order;
* a predicate ``(name, module) -> bool``.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Union

from torch import nn

from normgrad.errors import NormGradError
from normgrad.support import LAYERS_HINT

INPUT = "input"

LayerSelector = Union[str, nn.Module, type, Callable[[str, nn.Module], bool]]
Layers = Union[LayerSelector, Iterable[LayerSelector]]


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every named submodule of ``model`` (the root itself excluded), in model order."""
    return {name: module for name, module in model.named_modules() if name}


def layer_names(model: nn.Module) -> list[str]:
    """The names :func:`select_layers` accepts: ``"input"`` then every submodule."""
    return [INPUT, *named_layers(model)]


@dataclass(frozen=True)
class Selected:
    """A selected layer; ``explicit`` when named (or given as a module object), else matched by a type, glob or predicate."""

    name: str
    module: nn.Module | None
    explicit: bool


def select_layers(model: nn.Module, layers: Layers) -> list[tuple[str, nn.Module | None]]:
    """Resolve a selection into ``(name, module)`` pairs (module ``None`` for the input).

    The order is the order of the selection, each selector expanded in model
    order; duplicates are dropped.  Selectors are a union: a type or
    predicate that matches nothing is fine as long as something is selected.
    """
    return [(chosen.name, chosen.module) for chosen in resolve_layers(model, layers)]


def resolve_layers(model: nn.Module, layers: Layers) -> list[Selected]:
    """As :func:`select_layers`, telling which layers were named explicitly.

    The engine treats them differently: a named layer without a map is an
    error; a layer matched by a type, glob or predicate that never runs,
    runs twice or has no image grid is skipped with a warning.
    """
    modules = named_layers(model)
    chosen: dict[str, Selected] = {}
    unmatched: list[str] = []
    for selector in _as_list(layers):
        explicit = isinstance(selector, nn.Module) or (isinstance(selector, str) and not _is_pattern(selector, modules))
        names = list(_expand(selector, modules))
        if not names:
            unmatched.append(_describe_selector(selector))
        for name in names:
            if name not in chosen:
                chosen[name] = Selected(name, None if name == INPUT else modules[name], explicit)
            elif explicit:
                chosen[name] = Selected(name, chosen[name].module, True)
    if not chosen:
        if unmatched:
            raise NormGradError(f"no layer of the model matches {' or '.join(unmatched)}")
        raise NormGradError(f"no layer selected: {LAYERS_HINT} (names, module types or a predicate)")
    return list(chosen.values())


def _is_pattern(name: str, modules: dict[str, nn.Module]) -> bool:
    return name != INPUT and name not in modules and any(char in name for char in "*?[")


def _describe_selector(selector: LayerSelector) -> str:
    return f"modules of type {selector.__name__}" if isinstance(selector, type) else "the predicate"


def _as_list(layers: Layers) -> list[LayerSelector]:
    if isinstance(layers, (str, nn.Module, type)) or (callable(layers) and not isinstance(layers, (list, tuple))):
        return [layers]  # type: ignore[list-item]
    if isinstance(layers, Iterable):
        return list(layers)
    raise NormGradError(f"layers must be a name, module, module type, predicate or a list of them; got {type(layers).__name__}")


def _expand(selector: LayerSelector, modules: dict[str, nn.Module]) -> Iterator[str]:
    if isinstance(selector, str):
        yield from _expand_name(selector, modules)
    elif isinstance(selector, nn.Module):
        yield _name_of(selector, modules)
    elif isinstance(selector, type):
        yield from (name for name, module in modules.items() if isinstance(module, selector))
    elif callable(selector):
        yield from (name for name, module in modules.items() if selector(name, module))
    else:
        raise NormGradError(f"cannot select a layer with {selector!r}: pass a name, module, module type or predicate")


def _expand_name(name: str, modules: dict[str, nn.Module]) -> Iterator[str]:
    if name == INPUT or name in modules:
        yield name
        return
    if any(char in name for char in "*?["):
        matches = [n for n in [INPUT, *modules] if fnmatch.fnmatchcase(n, name)]
        if matches:  # a pattern that matches nothing is a typo: the error names the closest layers
            yield from matches
            return
    raise NormGradError(unknown_layer_message(name, [INPUT, *modules]))


def unknown_layer_message(name: str, valid: list[str]) -> str:
    """``unknown layer 'x'; closest names: ...`` — the error for a name not in the model."""
    close = difflib.get_close_matches(name, valid, n=6, cutoff=0.5)
    close += [v for v in valid if name and name in v and v not in close][: 6 - len(close)]
    hint = f"closest names: {', '.join(close)}" if close else f"valid names include: {', '.join(valid[:8])}, ..."
    return f"unknown layer {name!r}; {hint} (ng.layer_names(model) or `normgrad layers MODEL` list all {len(valid)})"


def _name_of(module: nn.Module, modules: dict[str, nn.Module]) -> str:
    for name, candidate in modules.items():
        if candidate is module:
            return name
    raise NormGradError(f"the module {type(module).__name__} passed in layers is not a submodule of the model")
