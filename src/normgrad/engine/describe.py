"""Layers as one forward pass sees them: each module's output shape, calls and layout (:func:`describe_layers`).

What :func:`normgrad.engine.default_layers.auto_layers` chooses from and ``normgrad layers`` prints: a
:class:`LayerInfo` per module, in execution order, with the layout of its output decided on the same evidence
as the engine's (:mod:`normgrad.engine.layouts`) and, on request, whether the gradient is exactly zero there.
"""

import collections
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from normgrad.engine.chains import ChainProbe
from normgrad.engine.layers import INPUT, named_layers
from normgrad.engine.layouts import Evidence, LayoutError, activation_of, decide_layout, sizes_of
from normgrad.engine.model_state import Hooks, eval_mode
from normgrad.formulas.layout import Layout
from normgrad.outputs import logits_of


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
    ``aux_classifier`` heads before the upsampling).  ``chained`` (containers
    only): the elements form a chain, each running on the previous one's
    output alone (a stage of blocks), not side by side (parallel branches,
    the summands of a sum the parent computes; :mod:`normgrad.engine.chains`).
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
    chained: bool = False

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
        chains = ChainProbe(modules, image)
        chains.attach(hooks)
        result = logits_of(model(image))
        chained = chains.chained()
        for name, reference in activations.items():
            seen[name].is_output = _scores_like(reference(), seen[name], result)
        if gradients and result is not None and result.requires_grad:
            (reached,) = torch.autograd.grad(result.float().sum(), image, allow_unused=True)  # never into a parameter's .grad
            image_zero = reached is None or not bool(reached.any())
            for name, info in seen.items():
                info.zero = zero.get(name, info.layout is not None)  # a map no gradient reached is zero
        del image, result, chains
    never_ran = [LayerInfo(n, type(m).__name__, None, 0, None, "never runs") for n, m in modules.items() if n not in seen]
    for info in [*seen.values(), *never_ran]:
        info.chained = info.name in chained
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
