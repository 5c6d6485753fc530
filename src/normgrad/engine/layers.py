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

import torch
from torch import nn

from normgrad.engine.model_state import Hooks, eval_mode
from normgrad.errors import NormGradError

INPUT = "input"

LayerSelector = Union[str, nn.Module, type, Callable[[str, nn.Module], bool]]
Layers = Union[LayerSelector, Iterable[LayerSelector]]


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every named submodule of ``model`` (the root itself excluded), in model order."""
    return {name: module for name, module in model.named_modules() if name}


def layer_names(model: nn.Module) -> list[str]:
    """The names :func:`select_layers` accepts: ``"input"`` then every submodule."""
    return [INPUT, *named_layers(model)]


def select_layers(model: nn.Module, layers: Layers) -> list[tuple[str, nn.Module | None]]:
    """Resolve a selection into ``(name, module)`` pairs (module ``None`` for the input).

    The order is the order of the selection, each selector expanded in model
    order; duplicates are dropped.
    """
    modules = named_layers(model)
    chosen: dict[str, nn.Module | None] = {}
    for selector in _as_list(layers):
        for name in _expand(selector, modules):
            chosen.setdefault(name, None if name == INPUT else modules[name])
    if not chosen:
        raise NormGradError("no layer selected: pass layer names, module types or a predicate in layers=[...]")
    return list(chosen.items())


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
        yield from _matching(modules, lambda _name, module: isinstance(module, selector), f"modules of type {selector.__name__}")
    elif callable(selector):
        yield from _matching(modules, selector, "the predicate")
    else:
        raise NormGradError(f"cannot select a layer with {selector!r}: pass a name, module, module type or predicate")


def _expand_name(name: str, modules: dict[str, nn.Module]) -> Iterator[str]:
    if name == INPUT or name in modules:
        yield name
        return
    if any(char in name for char in "*?["):
        matches = [n for n in [INPUT, *modules] if fnmatch.fnmatchcase(n, name)]
        if matches:
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


def _matching(modules: dict[str, nn.Module], predicate: Callable[[str, nn.Module], bool], what: str) -> Iterator[str]:
    found = [name for name, module in modules.items() if predicate(name, module)]
    if not found:
        raise NormGradError(f"no layer of the model matches {what}")
    yield from found


@dataclass
class LayerInfo:
    """One module as seen in a forward pass: its name, type, output shape and call count."""

    name: str
    type: str
    output_shape: tuple | None
    calls: int


def describe_layers(model: nn.Module, example: torch.Tensor) -> list[LayerInfo]:
    """Every submodule with its type and output shape, in execution (post-)order, from one no-grad pass."""
    modules = named_layers(model)
    seen: dict[str, LayerInfo] = {}
    with torch.no_grad(), eval_mode(model), Hooks() as hooks:

        def make_hook(name: str):
            def hook(module: nn.Module, inputs: tuple, output: object) -> None:
                info = seen.get(name)
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
                if info is None:
                    seen[name] = LayerInfo(name, type(module).__name__, shape, 1)
                else:
                    info.calls += 1

            return hook

        for name, module in modules.items():
            hooks.add(module.register_forward_hook(make_hook(name)))
        model(example)
    never_ran = [LayerInfo(n, type(m).__name__, None, 0) for n, m in modules.items() if n not in seen]
    return [LayerInfo(INPUT, "input", tuple(example.shape), 1), *seen.values(), *never_ran]


def auto_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Default layers: one per spatial resolution, the shallowest module that ends there.

    At each output resolution with stride at least 4 (above 1×1) the modules
    nearest the top of the model (fewest dots in the name) are kept, and of
    those the last to run: ``layer1..4`` in ResNets, the stage outputs of
    EfficientNets, the ReLU before each pool in VGG (the paper's
    ``features.15/.22/.29``).  Shared modules are skipped.
    """
    height = example.shape[-2]
    chosen: dict[tuple, tuple[int, str]] = {}
    for info in describe_layers(model, example):
        shape = info.output_shape
        if info.name == INPUT or info.calls != 1 or shape is None or len(shape) != 4:
            continue
        if shape[-2] > (height + 3) // 4 or shape[-2] * shape[-1] <= 1:
            continue
        depth = info.name.count(".")
        key = tuple(shape[-2:])
        if key not in chosen or depth <= chosen[key][0]:
            chosen.pop(key, None)
            chosen[key] = (depth, info.name)
    if not chosen:
        raise NormGradError("cannot choose default layers: no module outputs a spatial (N, C, H, W) map")
    return [name for _, name in chosen.values()]
