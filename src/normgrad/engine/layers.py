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

import collections
import difflib
import fnmatch
import math
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from normgrad.engine.layouts import Evidence, LayoutError, activation_of, decide_layout, grid_fit, sizes_of
from normgrad.engine.model_state import Hooks, eval_mode
from normgrad.errors import NormGradError
from normgrad.formulas.layout import Layout
from normgrad.outputs import logits_of
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


@dataclass
class LayerInfo:
    """One module as seen in a forward pass: name, type, output shape, call count and the layout of its output.

    ``layout`` is ``None`` when the output has no map; ``note`` then says why.
    ``takes_image`` marks modules whose input is the image itself (stems,
    patch embeddings and the containers that hold them).  ``feeds_parent``:
    the output (or a view of it) is part of the output of the nearest
    enclosing module that runs (a block sequence that ends its stage; not a
    branch added to a shortcut, not a part of an attention).  ``zero``: the
    gradient of the summed logits is exactly zero there (patch tokens after a
    class-token model's last attention); ``None`` when not computed.
    ``is_output`` marks the modules whose output is the model's score tensor
    (a Hugging Face ``ModelOutput``'s ``logits``) or, for a segmenter, a map
    with as many channels as its scores (torchvision's ``classifier`` and
    ``aux_classifier`` heads before the upsampling).
    """

    name: str
    type: str
    output_shape: tuple | None
    calls: int
    layout: Layout | None = None
    note: str = ""
    takes_image: bool = False
    feeds_parent: bool = False
    zero: bool | None = None
    is_output: bool = False

    @property
    def layout_text(self) -> str:
        """The layout in words (``(N, H, W, C) 7×7``), or why there is no map."""
        return str(self.layout) if self.layout is not None else self.note


def model_device(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """Where the model's first parameter (or buffer) lives; ``default`` for a model without any."""
    tensor = next(model.parameters(), None)
    tensor = next(model.buffers(), None) if tensor is None else tensor
    return tensor.device if tensor is not None else torch.device(default)


def describe_layers(model: nn.Module, example: torch.Tensor, *, gradients: bool = False) -> list[LayerInfo]:
    """Every submodule with its type, output shape and layout, in execution (post-)order, from one forward pass.

    The pass builds the autograd graph (as the engine's does) so that layouts
    are decided on the same evidence; with ``gradients`` the summed logits
    are back-propagated once to tell which outputs get a zero gradient
    (nothing is stored but one flag per layer).
    """
    modules = named_layers(model)
    evidence = Evidence.of(model, example)
    seen: dict[str, LayerInfo] = {}
    outputs: dict[str, list[weakref.ref]] = {}  # weak: a child's output that its parent dropped is gone, never mistaken
    below: dict[str, list[str]] = collections.defaultdict(list)  # a running module → the modules whose nearest running ancestor it is
    for name in modules:
        below[_running_ancestor(name, modules)].append(name)
    zero: dict[str, bool] = {}
    image_zero: bool | None = None
    activations: dict[str, weakref.ref] = {}  # to find the module that outputs the model's scores, without keeping tensors alive
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model), Hooks() as hooks:
        image = example.detach().to(model_device(model, example.device)).requires_grad_(True).clone()  # a non-leaf, as in the engine
        gradients = gradients and image.device.type != "meta"  # a meta tensor has no values to tell a zero gradient

        def make_hook(name: str):
            def hook(module: nn.Module, inputs: tuple, output: object) -> None:
                info = seen.get(name)
                if info is not None:
                    info.calls += 1
                    info.layout, info.note = None, "runs more than once (a shared module)"
                    return
                _mark_feeders(name, output, below, outputs, seen)
                outputs[name] = [weakref.ref(t) for t in _tensors(output)]
                takes_image = bool(inputs) and inputs[0] is image
                activation = activation_of(output)
                if activation is None:
                    seen[name] = LayerInfo(name, type(module).__name__, None, 1, None, f"outputs a {type(output).__name__}", takes_image)
                    return
                layout, note = _layout_or_reason(activation, module, evidence, name, sizes_of(output))
                output = activation
                activations[name] = weakref.ref(activation)
                seen[name] = LayerInfo(name, type(module).__name__, tuple(output.shape), 1, layout, note, takes_image)
                if gradients and layout is not None and activation.requires_grad:
                    activation.register_hook(lambda g, name=name, layout=layout: zero.__setitem__(name, not bool(layout.to_nchw(g).any())))

            return hook

        for name, module in modules.items():
            hooks.add(module.register_forward_hook(make_hook(name)))
        result = logits_of(model(image))
        for name, reference in activations.items():
            seen[name].is_output = _scores_like(reference(), seen[name], result)
        if gradients and result is not None and result.requires_grad:
            (reached,) = torch.autograd.grad(result.float().sum(), image, allow_unused=True)  # never into a parameter's .grad
            image_zero = reached is None or not bool(reached.any())
            for name, info in seen.items():
                info.zero = zero.get(name, info.layout is not None)  # a map no gradient reached is zero
        del image, result
    never_ran = [LayerInfo(n, type(m).__name__, None, 0, None, "never runs") for n, m in modules.items() if n not in seen]
    image = LayerInfo(INPUT, "input", tuple(example.shape), 1, Layout("nchw", evidence.grid))
    image.zero = image_zero if gradients and seen and any(info.zero is not None for info in seen.values()) else None
    return [image, *seen.values(), *never_ran]


def _tensors(output: object) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [item for item in output if isinstance(item, torch.Tensor)]
    if isinstance(output, dict):
        return [item for item in output.values() if isinstance(item, torch.Tensor)]
    return []


def _running_ancestor(name: str, modules: dict[str, nn.Module]) -> str:
    """The nearest ancestor with a forward of its own ("" for the model): a ``ModuleList``/``ModuleDict`` never runs."""
    parent = name.rpartition(".")[0]
    while parent and isinstance(modules[parent], (nn.ModuleList, nn.ModuleDict)) and type(modules[parent]).forward is nn.Module.forward:
        parent = parent.rpartition(".")[0]
    return parent


def _mark_feeders(name: str, output: object, below: dict[str, list[str]], outputs: dict[str, list[weakref.ref]], seen: dict) -> None:
    """Mark the modules under ``name`` whose output (still alive) shares storage with ``name``'s output."""
    storages = {_storage(t) for t in _tensors(output)}
    for child in below.get(name, ()):
        alive = [ref() for ref in outputs.get(child, ())]
        if child in seen and any(t is not None and _storage(t) in storages for t in alive):
            seen[child].feeds_parent = True


def _storage(tensor: torch.Tensor) -> int:
    """The identity of a tensor's storage (both tensors alive: equal only when shared; meta tensors included)."""
    return tensor.untyped_storage()._cdata


def _scores_like(activation: torch.Tensor | None, info: LayerInfo, scores: torch.Tensor | None) -> bool:
    """The model's scores, or (dense scores only) a map with as many channels: a segmenter's head before its upsampling."""
    if scores is None or not isinstance(scores, torch.Tensor):
        return False
    if activation is scores:
        return True
    if scores.dim() != 4 or info.layout is None or info.layout.kind == "vector" or info.output_shape is None:
        return False
    channels = info.output_shape[-1] if info.layout.channels_last else info.output_shape[1]
    return channels == scores.shape[1]


def _layout_or_reason(
    output: torch.Tensor, module: nn.Module, evidence: Evidence, name: str, sizes: tuple[int, ...] | None = None
) -> tuple[Layout | None, str]:
    if not output.is_floating_point():
        return None, f"{output.dtype} output"
    try:
        return decide_layout(output, module, evidence, f"layer {name!r}", sizes), ""
    except LayoutError as error:
        return None, f"no map: {error.reason}"


SEQUENCE_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
LAYOUT_ONLY = (nn.Identity, nn.modules.dropout._DropoutNd, nn.Flatten, nn.Unflatten)
LAYOUT_ONLY_NAMES = ("Permute", "Flat", "DropPath")
ISOTROPIC_BLOCKS = 4
EMBEDDING_NAMES = ("PositionalEncoding",)  # torchvision MViT's: positions added to the patch embedding, not a stage


def auto_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Default layers, by architecture: one per stage (hierarchical models) or evenly spaced blocks (isotropic ones).

    Candidates are block outputs (:func:`block_outputs`) that run once, whose
    output is on the image grid (any layout: maps, channels-last maps,
    tokens) at a stride of at least 4 and more than one position, whose
    gradient is not identically zero, that are not a stem or patch embedding
    (a module that takes the image itself, or lies inside one that takes it
    and ends above the coarsest resolution; a ``stem``/``patch_embed``) and
    that compute something (not an ``Identity``, ``Dropout``, ``Flatten`` or
    ``Permute``).  A container of several stages (``stages``, ``blocks``) is
    not a stage.

    * **Hierarchical** models (candidates at several resolutions: ResNet,
      ConvNeXt, Swin, MaxViT, CoAtNet, EfficientFormer, MobileViT, LeViT...):
      at each resolution, the shallowest candidate, and of those the last to
      run — the stage output (``layer1..4``; the ReLU before each VGG pool).
    * **Isotropic** models (one resolution: ViT, DeiT, EVA...): four evenly
      spaced blocks of the longest run of equal-shaped sibling blocks, up to
      the second-to-last — in a class-token model the last block's patch
      tokens do not reach the output, so its map is zero (ViT-B:
      ``blocks.2, .5, .8, .10``).

    A model without any candidate (blocks that output tuples or lists, tokens
    off the image grid) gets one error saying why; never a fallback to a patch
    embedding, a head or a zero map.
    """
    noise = torch.randn(example.shape, generator=torch.Generator().manual_seed(0)).to(example)  # a zero image zeroes gradients
    infos = describe_layers(model, noise, gradients=True)
    modules = named_layers(model)
    height, width = example.shape[-2:]
    on_grid = [info for info in infos[1:] if _on_coarse_grid(info, height, width)]
    coarsest = min((_area(info.layout) for info in on_grid), default=0)  # type: ignore[arg-type]
    stems = [
        info.name + "." for info in infos[1:] if _stem_like(info, modules) and info.layout is not None and _area(info.layout) > coarsest
    ]
    blocks = set(block_outputs(model, infos))
    candidates = [
        info for info in on_grid if info.name in blocks and not info.is_output and not any(info.name.startswith(stem) for stem in stems)
    ]
    if infos[0].zero:  # no gradient reaches even the image (a zeroed head): the weights, not the structure, made the maps zero
        for info in candidates:
            info.zero = False
    trunk = [info for info in candidates if not info.zero and grid_fit(*info.layout.grid[-2:], height, width, True)]  # type: ignore[union-attr]
    trunk = [info for info in trunk if not any(_holds_another_stage(info, other) for other in trunk)]
    by_grid: dict[tuple[int, int], list[LayerInfo]] = {}
    for info in trunk:
        by_grid.setdefault(info.layout.grid, []).append(info)  # type: ignore[union-attr]
    if len(by_grid) <= 1:
        run = _longest_block_run(candidates, modules)[:-1]  # a class-token model reads nothing from the last block's patches
        if len(run) < 2:  # blocks in a named sequence that a final norm ends (torchvision ViT's encoder): blocks with maps
            by_name = {info.name: info for info in infos}
            blocks_on_grid = [
                info
                for info in on_grid
                if list(modules[info.name].children()) and not _stem_like(info, modules) and not _in_branch(info.name, modules, by_name)
            ]
            run = _longest_block_run([info for info in blocks_on_grid if not info.is_output], modules)[:-1]
        run = [info for info in run if not info.zero]
        if len(run) >= 2:
            count = min(ISOTROPIC_BLOCKS, len(run))
            return [run[math.ceil((i + 1) * len(run) / count) - 1].name for i in range(count)]
    if not by_grid:
        raise NormGradError(no_default_layers_message(infos, "no block output of the model is a map on the image grid at stride 4 or more"))
    shapes = {info.name: info.output_shape for info in infos if info.calls >= 1}
    chosen = []
    order = {info.name: i for i, info in enumerate(infos)}
    last = max(order[info.name] for info in trunk)
    for members in by_grid.values():
        depth = min(_nesting(info.name, shapes) for info in members)
        stage = [info for info in members if _nesting(info.name, shapes) == depth]
        if order[stage[-1].name] == last and stage[-1].layout.kind == "tokens" and stage[-1].layout.prefix:  # type: ignore[union-attr]
            stage = stage[:-1]  # a class-token readout (MViT): the last block's grid tokens reach nothing
        chosen += stage[-1:]
    if not chosen:
        raise NormGradError(
            no_default_layers_message(infos, "the only candidate is the class-token readout, whose patch tokens reach nothing")
        )
    return [info.name for info in sorted(chosen, key=lambda info: order[info.name])]


def no_default_layers_message(infos: list[LayerInfo], what: str) -> str:
    """Why no default layer could be chosen, with the commonest reasons layers have no map, and what to do."""
    reasons = collections.Counter(
        info.note if info.note.startswith("no map") else f"blocks output a {info.note.rpartition(' ')[2]} (several tensors)"
        for info in infos
        if info.note.startswith(("no map", "outputs a"))
    )
    why = "; ".join(f"{count} layers: {note}" for note, count in reasons.most_common(3))
    return (
        f"cannot choose default layers: {what}"
        + (f" ({why})" if why else "")
        + f"; {LAYERS_HINT}, choosing layers with a map (`normgrad layers MODEL` lists every layer with its layout)"
    )


STEM_NAMES = ("stem", "patch_embed", "pos_embed", "pos_drop", "cls_token")
HEAD_NAMES = ("head", "aux_head", "classifier", "pre_logits")


def block_outputs(model: nn.Module, infos: list[LayerInfo]) -> list[str]:
    """The modules whose output is a block's output on the network's spine, in execution order.

    A block output is a module that runs once, has a map, computes something,
    is no stem or patch embedding (a module that takes the image itself, one
    named ``stem``/``patch_embed``, or one that runs before the spine's first
    block: TNT's ``norm2_proj``, which projects the pixel embedding into patch
    tokens), and lies on the spine:

    * neither it nor an ancestor is named ``stem``/``patch_embed``, nor ``head``/``aux_head``/``classifier``
      unless the model declares it a feature stage (timm's ``feature_info``:
      SelecSLS's convolutions ``head.1``, ``head.3`` come before its classifier ``fc``);
      each ancestor is a ``Sequential``/``ModuleList``/``ModuleDict`` (the
      trunk), or a stage module whose block sequence ends it (its output,
      or a view of it, is the stage's output: ``stages.1.blocks.2`` of a
      ConvNeXt stage, PiT's ``transformers.1.blocks.0``; blocks, not bare
      layers, and all but the first of the same output shape) — never a branch
      added to a shortcut (ResNet's ``downsample``), a part of an attention,
      or layers inside a block (MobileNet's ``conv.0``);
    * it is not a layer whose next sibling normalises or activates its output
      (a convolution before its BatchNorm, a BatchNorm before its ReLU): the
      layer group's output is the activation after them.
    """
    modules = named_layers(model)
    by_name = {info.name: info for info in infos}
    wrappers = {info.name for info in infos[1:] if info.calls >= 1 and info.output_shape is None and _hugging_face(modules[info.name])}
    declared = _declared_stages(model)
    stem = _before_first_block(infos, modules, by_name, wrappers)
    return [
        info.name
        for info in infos[1:]
        if info.calls == 1
        and info.layout is not None
        and info.layout.kind != "vector"
        and not _stem_like(info, modules)
        and not _layout_only(modules[info.name])
        and not _named_stem_or_head(info.name, declared)
        and info.name not in stem
        and _on_spine(info.name, modules, by_name, wrappers)
        and not _followed_by_pointwise(info.name, modules)
    ]


def _named_stem_or_head(name: str, declared: set[str]) -> bool:
    parts = name.split(".")
    if any(part.startswith(STEM_NAMES) for part in parts):
        return True
    return name not in declared and any(part.startswith(HEAD_NAMES) for part in parts)


def _declared_stages(model: nn.Module) -> set[str]:
    """The modules a timm model lists as its feature stages (``feature_info``; empty for other models)."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list):
        return set()
    return {entry["module"] for entry in info if isinstance(entry, dict) and isinstance(entry.get("module"), str)}


def _before_first_block(
    infos: list[LayerInfo], modules: dict[str, nn.Module], by_name: dict[str, LayerInfo], wrappers: set[str]
) -> set[str]:
    """The modules that finish before the spine's first block starts: the stem or patch embedding, whatever their names.

    A block: an element of a ``Sequential``/``ModuleList``/``ModuleDict`` with
    children of its own, that runs, lies on the spine and is no stem.  Hooks
    fire after a module's children (post-order), so a block starts with its
    first descendant to finish.  A model without such a block (VGG's bare
    layers, Inception's named modules) has no stem found this way.
    """
    order = {info.name: i for i, info in enumerate(infos) if info.calls >= 1}
    started: dict[str, int] = {}  # a module -> when its first descendant (or itself) finished
    for name, i in order.items():
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            started.setdefault(".".join(parts[:k]), i)
    start: int | None = None
    for info in infos[1:]:
        name = info.name
        parent = name.rpartition(".")[0]
        if (
            info.calls >= 1
            and isinstance(modules.get(parent), SEQUENCE_CONTAINERS)
            and list(modules[name].children())
            and not _stem_like(info, modules)
            and not _named_stem_or_head(name, set())
            and _on_spine(name, modules, by_name, wrappers)
        ):
            start = started[name] if start is None else min(start, started[name])
    return set() if start is None else {name for name, i in order.items() if i < start}


def _on_spine(name: str, modules: dict[str, nn.Module], by_name: dict[str, LayerInfo], wrappers: set[str]) -> bool:
    parts = name.split(".")
    for i in range(1, len(parts)):
        ancestor = ".".join(parts[:i])
        if isinstance(modules[ancestor], SEQUENCE_CONTAINERS) or ancestor in wrappers:
            continue
        path_child = ".".join(parts[: i + 1])  # inside a stage module: only its block sequence, when it ends the stage
        sequence = modules[path_child]
        if path_child == name or not isinstance(sequence, (nn.Sequential, nn.ModuleList)) or not len(sequence):
            return False
        if any(not list(block.children()) for block in sequence):  # a sequence of bare layers is a block's inside
            return False
        shapes = [getattr(by_name.get(f"{path_child}.{k}"), "output_shape", None) for k in range(len(sequence))]
        if None in shapes or len(set(shapes[1:] if len(shapes) > 2 else shapes)) > 1:  # two of different shapes: squeeze, expand
            return False  # blocks keep their shape (the first may resample); layers of a block change it (expand, project)
        last = path_child if isinstance(sequence, nn.Sequential) else f"{path_child}.{len(sequence) - 1}"
        info = by_name.get(last)
        if info is None or not info.feeds_parent:
            return False
    return True


def _in_branch(name: str, modules: dict[str, nn.Module], by_name: dict[str, LayerInfo]) -> bool:
    """Inside one of parallel branches: an ancestor is an element of a ``ModuleList``/``ModuleDict`` whose elements
    output different shapes (CrossViT's two token scales, HRNet's resolutions), so no element's output is the model's."""
    parts = name.split(".")
    for i in range(2, len(parts) + 1):
        parent = ".".join(parts[: i - 1])
        container = modules.get(parent)
        if isinstance(container, (nn.ModuleList, nn.ModuleDict)) and len(container) > 1:
            shapes = {getattr(by_name.get(f"{parent}.{key}"), "output_shape", None) for key in _keys(container)}
            if len(shapes) > 1:
                return True
    return False


def _keys(container: nn.Module) -> list[str]:
    return [key for key, _ in container.named_children()]


def _followed_by_pointwise(name: str, modules: dict[str, nn.Module]) -> bool:
    parent, _, index = name.rpartition(".")
    container = modules.get(parent) if parent else None
    if not index.isdigit() or not isinstance(container, (nn.Sequential, nn.ModuleList)) or int(index) + 1 >= len(container):
        return False
    return _pointwise(container[int(index) + 1])


def _pointwise(module: nn.Module) -> bool:
    """A normalisation or an activation: it finishes the layer before it."""
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
    return isinstance(module, norms) or "activation" in type(module).__module__


def _hugging_face(module: nn.Module) -> bool:
    """A Hugging Face ``transformers`` module: its wrappers (``ResNetModel``, the encoders, Swin's ``SwinStage``) return a
    ``ModelOutput`` or a tuple around the tensor that flows on, so they are passed through like a ``Sequential``."""
    return type(module).__module__.startswith("transformers.")


def _stem_like(info: LayerInfo, modules: dict[str, nn.Module]) -> bool:
    """A module that takes the image, unless it holds a ``ModuleList`` of blocks: then it is a stage (SegFormer's first)."""
    return info.takes_image and not _holds_blocks(modules[info.name])


def _holds_blocks(module: nn.Module) -> bool:
    return any(isinstance(child, nn.ModuleList) for child in module.modules())


def _nesting(name: str, shapes: dict[str, tuple | None]) -> int:
    """How many ancestors of ``name`` output one tensor: lists that never run and wrappers (a ``ModelOutput``, a tuple) do not count."""
    parts = name.split(".")
    return sum(shapes.get(".".join(parts[:i])) is not None for i in range(1, len(parts)))


def _on_coarse_grid(info: LayerInfo, height: int, width: int) -> bool:
    if info.calls != 1 or info.layout is None or info.layout.kind == "vector":
        return False
    grid_height, grid_width = info.layout.grid[-2:]  # the frame's grid (videos: time is strided separately)
    return grid_height * grid_width > 1 and grid_height <= (height + 3) // 4 and grid_width <= (width + 3) // 4


def _holds_another_stage(container: LayerInfo, other: LayerInfo) -> bool:
    return other.name.startswith(container.name + ".") and other.layout.grid != container.layout.grid  # type: ignore[union-attr]


def _area(layout: Layout) -> int:
    return layout.grid[-2] * layout.grid[-1]


def _layout_only(module: nn.Module) -> bool:
    return isinstance(module, LAYOUT_ONLY) or type(module).__name__ in LAYOUT_ONLY_NAMES + EMBEDDING_NAMES


def _longest_block_run(candidates: list[LayerInfo], modules: dict[str, nn.Module]) -> list[LayerInfo]:
    """The longest run of consecutive children of one ``Sequential``/``ModuleList`` with equal output shapes."""
    children: dict[str, list[LayerInfo]] = {}
    for info in candidates:
        parent = info.name.rpartition(".")[0]
        if parent and isinstance(modules[parent], SEQUENCE_CONTAINERS):
            children.setdefault(parent, []).append(info)
    best: list[LayerInfo] = []
    for siblings in children.values():
        run: list[LayerInfo] = []
        for info in siblings:
            run = [*run, info] if run and run[-1].output_shape == info.output_shape else [info]
            if len(run) > len(best):
                best = run
    return best


def nearest_grid_layer(model: nn.Module, example: torch.Tensor, name: str) -> str | None:
    """A module near ``name`` whose output is on the image grid: the nearest ancestor, else the next one to run."""
    infos = describe_layers(model, example)
    by_name = {info.name: info for info in infos}
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        info = by_name.get(".".join(parts[:i]))
        if info is not None and info.calls == 1 and info.layout is not None and info.layout.kind != "vector":
            return info.name
    names = [info.name for info in infos]
    after = names[names.index(name) + 1 :] if name in names else []
    return next((n for n in after if by_name[n].calls == 1 and by_name[n].layout is not None and by_name[n].layout.kind != "vector"), None)
