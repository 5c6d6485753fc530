"""The default layers: one per stage, or evenly spaced blocks of an isotropic model (:func:`auto_layers`).

A default layer is the output of a block — the residual sum a stage is built from, never a branch inside
attention, a shortcut's normalisation, a downsample, a patch embedding, a head or a final norm
(:func:`block_outputs`) — with a map on a grid coarser than the image; a family where no such layer exists
gets one clear refusal (:func:`no_default_layers_message`), never a fallback.
"""

import collections
import math

import torch
from torch import nn

from normgrad.engine.describe import LayerInfo, describe_layers
from normgrad.engine.layers import named_layers
from normgrad.engine.layouts import grid_fit
from normgrad.errors import NormGradError
from normgrad.formulas.layout import Layout
from normgrad.support import LAYERS_HINT

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
      each ancestor is a ``Sequential``/``ModuleList``/``ModuleDict`` whose
      elements form a chain (the trunk: each element runs on the previous
      one's output alone, :mod:`normgrad.engine.chains`; never a list of
      parallel branches or of the summands of a sum the parent computes
      inline, HRNet's ``incre_modules`` and ``downsamp_modules``), or a
      stage module whose block sequence ends it (its output,
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
        if isinstance(modules[ancestor], SEQUENCE_CONTAINERS):
            if not getattr(by_name.get(ancestor), "chained", False):
                return False  # elements side by side (branches, summands of a sum the parent computes): none is on the spine
            continue
        if ancestor in wrappers:
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
