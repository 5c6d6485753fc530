"""What ``normgrad explain`` and :class:`~normgrad.models.LoadedModel` do when told nothing: one rule for any model.

Chosen on the grid benchmark (docs/results.md, "Choosing the default"): real
photos in 2×2 and 3×3 grids, where the target class's cell must hold the
map's argmax and its positive mass.  The rule reads the architecture from
one probing pass over the candidate layers — the stage outputs
(:func:`~normgrad.engine.default_layers.auto_layers`) and the elements of block
sequences (``blocks.6``, ``layer4.1``) — which gives each layer's stride and
whether its gradient ``g_u = ∂J/∂a_u`` reaches the output at all:

============  ======================================================================  ==============================
choice        rule                                                                    EfficientNet-Lite0 / ResNet
============  ======================================================================  ==============================
fine layer    NormGrad selective ``‖max(0, a_u ⊙ g_u)‖`` at the last layer of stride   ``blocks.4`` / ``layer3``
              ≤ 16 before the deep layers
deep layers   gradient × activation ``Σ_c a_{u,c} g_{u,c}`` (the framework's           ``blocks.6``, ``bn2`` /
              ``scaling+sum``, its linear approximation) at the last two layers of    ``layer4.1``, ``layer4``
              the coarsest stride; at the layer before global pooling it is CAM
combination   product of the min-max normalised maps                                  ``product``
input         the shorter side keeps its own length between the model's size and     224 … 448
              2× it (a model with a fixed input size keeps its own)
============  ======================================================================  ==============================

Layers with a zero gradient (a class-token ViT's patch tokens after the last
block) are left out.  Why this rule: plain NormGrad at the layer before
global pooling is ``‖W_c‖·‖a_u‖/hw``, the same map for every class
(METHOD.md §8); selective NormGrad keeps only the positive part, so the
strongest object wins whatever the class; the signed sum keeps the class
weights' signs, the negative evidence included, and the stride-16 selective
map makes the product finer than the deep layers alone.  Squeezing a
448-pixel grid into 224 halves every object.

Nothing here changes what ``ng.normgrad`` or ``ng.saliency`` compute: these
are defaults, each overridable (``--method``, ``--layers``, ``--combine``,
``--size``; in Python, call the methods with any layers).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from normgrad.engine.default_layers import auto_layers, block_outputs, no_default_layers_message
from normgrad.engine.describe import describe_layers
from normgrad.engine.model_state import eval_mode
from normgrad.errors import NormGradError
from normgrad.methods import saliency
from normgrad.registry import Method, get_method
from normgrad.support import LAYERS_HINT

FINE_METHOD = "selective"
DEEP_METHOD = "scaling+sum"
FINE_STRIDE = 16  # the fine layer's stride at most
DEEP_LAYERS = 2  # how many block outputs of the deepest resolution
COMBINE = "product"
MAX_SCALE = 2  # the input's shorter side: up to this many times the model's own size
NAME = "default"


@dataclass(frozen=True)
class Stage:
    """A candidate layer as the probe saw it: its map's stride, and whether its gradient is zero (it does not reach the output)."""

    name: str
    stride: int
    depth: int
    zero: bool = False  # ∂J/∂a = 0 everywhere: e.g. a class-token ViT's patch tokens after the last attention


@dataclass(frozen=True)
class ExplainDefaults:
    """The default method (per layer), layers, combination and preprocessing of one model."""

    layers: tuple[str, ...]
    methods: dict[str, str]  # layer -> registry method name
    combine: str
    preprocess: Any
    stages: tuple[Stage, ...]

    @property
    def method(self) -> Method:
        """One registry :class:`~normgrad.registry.Method`: each layer with its own method, all in one engine pass."""
        return layered(self.methods)

    def describe(self) -> str:
        per_layer = ", ".join(f"{layer}: {self.methods[layer]}" for layer in self.layers)
        size = self.preprocess.size if self.preprocess.max_size is None else f"{self.preprocess.size}…{self.preprocess.max_size}"
        return f"{per_layer}; {self.combine}; input shorter side {size}"


def layered(methods: dict[str, str], fallback: str = FINE_METHOD) -> Method:
    """A registry method computing each layer with its own method (``{layer: name}``); other layers use ``fallback``.

    The engine's methods (``normgrad``, ``selective``, ``<extract>+<aggregate>``)
    share one forward/backward pass, each layer with its own pair; any other
    method runs its own call on its layers.
    """

    def function(model: nn.Module, inputs: Tensor, target: Any = None, *, layers: Any, **options: Any) -> dict[str, Tensor]:
        names = [layers] if isinstance(layers, str) else list(layers)
        if not all(isinstance(name, str) for name in names):
            raise NormGradError("the default method takes layer names (strings); pass --method to select layers otherwise")
        chosen = {name: get_method(methods.get(name, fallback)) for name in names}
        pairs = {} if options else {name: method.pair for name, method in chosen.items() if method.pair is not None}
        maps: dict[str, Tensor] = {}
        if pairs:
            maps.update(saliency(model, inputs, target, layers=list(pairs), per_layer=pairs))
        groups: dict[str, list[str]] = {}
        for name, method in chosen.items():
            if name not in pairs:
                groups.setdefault(method.name, []).append(name)
        for method_name, group in groups.items():
            maps.update(get_method(method_name)(model, inputs, target, layers=group, **options))
        return {name: maps[name] for name in names}

    title = " × ".join(dict.fromkeys(get_method(m).title for m in methods.values())) or get_method(fallback).title
    engine = all(get_method(m).engine for m in [*methods.values(), fallback])
    return Method(NAME, function, True, title, engine=engine)


def probe(model: nn.Module, example: Tensor) -> list[Stage]:
    """The candidate layers with stride and gradient variation, from one forward/backward pass on ``example``.

    Candidates: the stage outputs of :func:`~normgrad.engine.default_layers.auto_layers`
    and every element of a block sequence (``blocks.6``, ``layer4.1``) that
    runs once.  Layers whose output is the same tensor as an earlier one
    (``layer4.2`` and ``layer4``) are kept once, under the shallower name.
    """
    infos = describe_layers(model, example)
    modules = dict(model.named_modules())
    names: set[str] = set()
    if _has_spatial(infos):
        with contextlib.suppress(NormGradError):  # no stage output: the block sequences may still have some
            names.update(auto_layers(model, example))
    for name in block_outputs(model, infos):  # block outputs with a map only: candidates without one are skipped
        parent, _, index = name.rpartition(".")
        if index.isdigit() and isinstance(modules.get(parent), (nn.Sequential, nn.ModuleList)):
            names.add(name)
    ordered = [info.name for info in infos if info.name in names]
    if not ordered:
        raise NormGradError(no_default_layers_message(infos, "the model has neither stage outputs nor block outputs with a map"))
    device = next(model.parameters()).device
    maps = saliency(model, example.to(device), probe_target(model, example.to(device)), layers=ordered, extract="bias", aggregate="norm")
    stages: list[Stage] = []
    kept: dict[str, Tensor] = {}
    for name in ordered:
        gradient = maps[name][0, 0].double().cpu()
        same = next((other for other, g in kept.items() if g.shape == gradient.shape and torch.equal(g, gradient)), None)
        depth = name.count(".")
        if same is not None:  # the same tensor under two names: keep the shallower
            if depth >= next(s.depth for s in stages if s.name == same):
                continue
            stages = [s for s in stages if s.name != same]
            kept.pop(same)
        if gradient.numel() < 2:  # a vector (a classifier's Linear): no map
            continue
        stride = max(1, round(example.shape[-2] / gradient.shape[0]))
        stages.append(Stage(name, stride, depth, zero=bool((gradient == 0).all())))
        kept[name] = gradient
    order = {name: i for i, name in enumerate(ordered)}
    return sorted(stages, key=lambda s: order[s.name])


def probe_target(model: nn.Module, example: Tensor) -> Any:
    """Class 0 for a classifier; for a segmenter (dense scores), class 0's scores summed over the whole image."""
    from normgrad.segmentation import Region, is_segmenter_output

    with torch.no_grad(), eval_mode(model):
        dense = is_segmenter_output(model(example))
    return Region(0, mask=torch.ones(example.shape[-2:])) if dense else 0


def _has_spatial(infos: list) -> bool:
    return any(info.output_shape is not None and len(info.output_shape) == 4 and info.name != "input" for info in infos)


def choose_layers(stages: list[Stage], fine_stride: int = FINE_STRIDE, deep_layers: int = DEEP_LAYERS) -> dict[str, str]:
    """``{layer: method}`` by the rule in the module docstring (in model order).

    Layers that do not reach the output (zero gradient) are left out.  Deep:
    the last ``deep_layers`` of the coarsest stride — the layer before global
    pooling among them, where ``scaling+sum`` is CAM.  Fine: the last layer of
    stride ≤ ``fine_stride`` before them.
    """
    usable = [s for s in stages if not s.zero]
    if stages and not usable:
        raise NormGradError(
            "cannot choose default layers: the model's output does not depend on any of its block outputs (every gradient "
            "is exactly zero; an untrained model whose classifier starts at zero, as timm initialises MLP-Mixer, Hiera and "
            "others, does this): load trained weights"
        )
    if len(usable) < 2:
        raise NormGradError(
            f"cannot choose default layers: fewer than two block outputs with a map that reaches the output among "
            f"{[s.name for s in stages]}; {LAYERS_HINT} (`normgrad layers MODEL` lists them)"
        )
    coarsest = max(s.stride for s in usable)
    deep = [s for s in usable if s.stride == coarsest][-deep_layers:]
    first_deep = stages.index(deep[0])
    fine = [s for s in usable if s.stride <= fine_stride and stages.index(s) < first_deep]
    if not fine:
        raise NormGradError(f"cannot choose default layers: no layer of stride ≤ {fine_stride} before {deep[0].name}")
    chosen = {fine[-1].name: FINE_METHOD} | {s.name: DEEP_METHOD for s in deep}
    return chosen


CHECK_PHOTOS = ((451, 300), (300, 451))  # (width, height) of photos whose input sizes the default layers must also map
MULTIPLES = (2, 4, 8, 16, 32, 64, 128, 256)  # side multiples tried for a model that refuses an odd size
AWKWARD = (17, 45)  # the probe's size: the model's own plus these, odd and non-square, so a divisibility constraint shows


def input_policy(model: nn.Module, preprocess: Any, max_scale: int = MAX_SCALE) -> Any:
    """``preprocess`` keeping the shorter side up to ``max_scale ×`` its size, if the model takes inputs of other sizes.

    A model with a declared fixed input size (``Preprocess.fixed_size``) keeps it.  For the
    others forward passes decide: at an odd, non-square size just above the model's own
    (any size works: shorter side up to ``max_scale ×``); else at the smallest side
    multiple of 2, 4, ... 256 that works (DLA, HRNet, HaloNet need divisible sizes:
    ``Preprocess.multiple``); else the model takes its own square size only (a position
    embedding of fixed size refuses any other).
    """
    if getattr(preprocess, "fixed_size", None) is not None or preprocess.square:  # the model's declared input size
        return replace(preprocess, max_size=None)
    height, width = preprocess.size + AWKWARD[0], preprocess.size + AWKWARD[1]
    for multiple in (1, *MULTIPLES):
        size = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)
        if _accepts(model, size):
            return replace(preprocess, max_size=max_scale * preprocess.size, multiple=multiple)
    return replace(preprocess, max_size=None, fixed_size=(preprocess.size, preprocess.size))  # the model's own size only


def _accepts(model: nn.Module, size: tuple[int, int]) -> bool:
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), eval_mode(model):  # BatchNorm statistics untouched
            model(torch.zeros(1, 3, *size, device=device))
    except Exception:  # any refusal of the model's forward: this size is not one it takes
        return False
    return True


def explain_defaults(model: nn.Module, preprocess: Any, policy: Any = None) -> ExplainDefaults:
    """The defaults for a model and its preprocessing; ``policy``: the :func:`input_policy` when already known.

    Probed once at the model's own input size; when the policy lets photos keep
    other sizes, only layers that also have a map at the input sizes of a
    landscape and a portrait photo are candidates (MobileViTv2 resamples to a
    multiple of its patch size inside some blocks, so their grid depends on
    the input size).
    """
    policy = input_policy(model, preprocess) if policy is None else policy
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(1, 3, *preprocess.example_size, generator=generator)
    stages = probe(model, example)  # in eval mode, the model left as it was (the engine's guarantee)
    if policy.max_size is not None:  # photos are explained at other sizes: keep the layers that have a map there too
        for width, height in CHECK_PHOTOS:
            other = torch.randn(1, 3, *policy.input_size(width, height), generator=generator)
            with_map = {info.name for info in describe_layers(model, other) if info.calls == 1 and info.layout is not None}
            stages = [stage for stage in stages if stage.name in with_map]
    methods = choose_layers(stages)
    return ExplainDefaults(tuple(methods), methods, COMBINE, policy, tuple(stages))


def input_policy_for(loaded: Any) -> Any:
    """The preprocessing ``normgrad explain`` uses for a :class:`~normgrad.models.LoadedModel` without ``--size``
    (:func:`input_policy`: one forward pass, no layer probe), computed once per loaded model."""
    if "input_policy" not in loaded.cache:
        loaded.cache["input_policy"] = input_policy(loaded.model, loaded.preprocess)
    return loaded.cache["input_policy"]


def defaults_for(loaded: Any) -> ExplainDefaults:
    """:func:`explain_defaults` of a :class:`~normgrad.models.LoadedModel`, probed once per loaded model."""
    if "explain_defaults" not in loaded.cache:
        loaded.cache["explain_defaults"] = explain_defaults(loaded.model, loaded.preprocess, input_policy_for(loaded))
    return loaded.cache["explain_defaults"]
