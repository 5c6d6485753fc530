"""One forward and one backward of the per-example training loss, with every chosen layer's ``p`` and ``q`` captured.

Forward hooks keep, for each layer, the vector its (real or virtual) weight
multiplies — a copy, taken before any in-place operation can overwrite it —
and the *gradient edge* of its output, as the saliency engine does; one
``torch.autograd.grad`` of ``Σ_n L(z_n)`` with respect to those edges gives
``p = ∂L(z_n)/∂output`` for every example at once (samples are independent
in eval mode).  No parameter gradient is formed and nothing is written into
``param.grad``.

==========  ==============================  =====================================  ==========
extract     layer                           ``q``                                  kind
==========  ==============================  =====================================  ==========
``conv1x1`` any module (or ``"input"``)     its output ``a`` (virtual identity)    pointwise
``scaling`` any module (or ``"input"``)     its output ``a`` (virtual gain)        diagonal
``layer``   ``Linear`` (vectors, tokens)    its input ``x``, at its output's       pointwise
                                            positions
``layer``   ``Conv2d`` (any window, groups) its input ``x``                        conv
==========  ==============================  =====================================  ==========

A layer's map lives on its output's image grid, read with the layout the
saliency engine decides (:mod:`normgrad.engine.layouts`); prefix tokens
(class, registers) take part in the scores but have no location on the map.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from normgrad.engine.layers import Layers, resolve_layers
from normgrad.engine.layouts import Evidence, activation_of, decide_layout
from normgrad.engine.model_state import Hooks, eval_mode
from normgrad.engine.single_pass import check_inputs
from normgrad.engine.workarounds import guard_batchnorm_backward, needs_batchnorm_guard
from normgrad.errors import NormGradError
from normgrad.formulas.layout import Layout
from normgrad.formulas.patches import conv_window
from normgrad.tracin.bilinear import LayerPass

INFLUENCE_EXTRACTS = ("conv1x1", "scaling", "layer")
Loss = Callable[[Any, Tensor], Tensor]  # (model output, labels) -> per-example loss (N,)


def cross_entropy(output: Any, labels: Tensor) -> Tensor:
    """The per-example training loss TracIn differentiates by default."""
    if not isinstance(output, Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise NormGradError(f"influence needs class scores (N, num_classes) from the model, or a loss= callable; got {shape}")
    return F.cross_entropy(output, labels, reduction="none")


@dataclass(frozen=True)
class LayerChoice:
    """A layer and the (real or virtual) weight whose gradient is split over its locations."""

    name: str
    module: nn.Module | None
    extract: str


def choose_layers(model: nn.Module, layers: Layers, extract: str | Mapping[str, str]) -> list[LayerChoice]:
    """The named layers with their extract (one for all, or ``{name: extract}``); each checked against its module."""
    chosen = resolve_layers(model, layers)
    per_layer = dict(extract) if isinstance(extract, Mapping) else {}
    unknown = set(per_layer) - {c.name for c in chosen}
    if unknown:
        raise NormGradError(f"extract names {sorted(unknown)[0]!r}, which is not among the selected layers {[c.name for c in chosen]}")
    choices = []
    for selected in chosen:
        name = per_layer.get(selected.name, extract if isinstance(extract, str) else "conv1x1")
        if name not in INFLUENCE_EXTRACTS:
            raise NormGradError(f"unknown influence extract {name!r} at layer {selected.name!r}; valid: {', '.join(INFLUENCE_EXTRACTS)}")
        if name == "layer" and not isinstance(selected.module, (nn.Conv2d, nn.Linear)):
            kind = "the input image" if selected.module is None else type(selected.module).__name__
            raise NormGradError(
                f"extract='layer' needs a Conv2d or Linear layer (its own weights); {selected.name!r} is {kind}: use 'conv1x1' "
                "(a virtual identity after it) or 'scaling'"
            )
        choices.append(LayerChoice(selected.name, selected.module, name))
    return choices


@dataclass
class Captured:
    """One layer in one pass: its :class:`LayerPass`, and the layout of its output (where its map lives)."""

    layer: LayerChoice
    layout: Layout
    step: LayerPass

    def grid(self, terms: Tensor) -> Tensor:
        """Per-position terms ``(N, T, P)`` as maps ``(N, T, h, w)`` on the layer's grid (prefix tokens dropped)."""
        if self.step.kind == "conv":
            return terms
        if self.layout.kind == "tokens" and self.layout.prefix:
            terms = terms[..., self.layout.prefix :]
        return terms.reshape(*terms.shape[:2], *self.layout.grid)


class _Probe:
    def __init__(self, layer: LayerChoice, evidence: Evidence) -> None:
        self.layer, self.evidence = layer, evidence
        self.calls = 0
        self.q: Tensor | None = None
        self.edge: GradientEdge | None = None
        self.layout: Layout | None = None
        self.shape: torch.Size | None = None

    def capture(self, inputs: tuple, output: Any) -> None:
        self.calls += 1
        where = f"layer {self.layer.name!r}"
        if self.calls > 1:
            raise NormGradError(f"{where} runs more than once in one forward pass (a shared module); choose a module that runs once")
        activation = activation_of(output)
        if activation is None or not activation.is_floating_point() or not activation.requires_grad:
            raise NormGradError(f"{where}: its output is not a float tensor computed from the input through autograd")
        self.layout = decide_layout(activation, self.layer.module, self.evidence, where)
        if self.layer.extract == "layer":
            layer_input = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
            if layer_input is None:
                raise NormGradError(f"{where}: the layer's input is not a tensor")
            self.q = layer_input.detach().clone()
        else:
            self.q = activation.detach().clone()  # a copy: an in-place operation may follow
        self.edge = get_gradient_edge(activation)
        self.shape = activation.shape

    def result(self, grad: Tensor | None) -> Captured:
        assert self.q is not None and self.layout is not None and self.shape is not None
        if grad is None:  # the layer does not reach the loss
            grad = torch.zeros(self.shape, dtype=self.q.dtype, device=self.q.device)
        module, where = self.layer.module, f"layer {self.layer.name!r}"
        if self.layer.extract == "layer" and isinstance(module, nn.Conv2d):
            if self.q.dim() != 4 or self.layout.kind != "nchw":
                raise NormGradError(f"{where}: Conv2d input of shape {tuple(self.q.shape)} is not supported; expected (N, C, H, W)")
            window = conv_window(module, tuple(self.q.shape[-2:]), tuple(grad.shape[-2:]))
            step = LayerPass("conv", grad.detach(), self.q, module.bias is not None, window, module.groups)
        elif self.layer.extract == "layer":
            assert isinstance(module, nn.Linear)
            if self.q.shape[:-1] != grad.shape[:-1]:
                raise NormGradError(f"{where}: the Linear input does not have the positions of its output {tuple(grad.shape)}")
            batch = grad.shape[0]
            step = LayerPass("pointwise", grad.detach().reshape(batch, -1, grad.shape[-1]), self.q.reshape(batch, -1, self.q.shape[-1]),
                             module.bias is not None)  # fmt: skip
        else:
            kind = "pointwise" if self.layer.extract == "conv1x1" else "diagonal"
            step = LayerPass(kind, positions(grad.detach(), self.layout), positions(self.q, self.layout))
        return Captured(self.layer, self.layout, step)


def positions(tensor: Tensor, layout: Layout) -> Tensor:
    """``(N, P, C)``: every position of an activation in ``layout`` (prefix tokens first, then the grid in raster order)."""
    if layout.kind == "nchw":
        return tensor.flatten(2).transpose(1, 2)
    if layout.kind == "nhwc":
        return tensor.flatten(1, 2)
    if layout.kind == "flat":
        return tensor.transpose(1, 2)
    if layout.kind == "vector":
        return tensor[:, None, :]
    return tensor  # tokens


def one_pass(model: nn.Module, inputs: Tensor, labels: Tensor, layers: list[LayerChoice], loss: Loss = cross_entropy) -> list[Captured]:
    """``p`` and ``q`` of every layer for the per-example ``loss(model(inputs), labels)``: one forward, one backward, eval mode."""
    check_inputs(inputs, model)
    evidence = Evidence.of(model, inputs)
    probes = [_Probe(layer, evidence) for layer in layers]
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model), Hooks() as hooks:
        image = inputs.detach().clone().requires_grad_(True).clone()  # a non-leaf: the model may modify its input in place
        for probe in probes:
            if probe.layer.module is None:
                probe.capture((), image)
            else:
                hooks.add(probe.layer.module.register_forward_hook(_hook(probe)))
        output = model(image)
        for probe in probes:
            if probe.calls == 0:
                raise NormGradError(f"layer {probe.layer.name!r} never ran in the forward pass; choose layers that compute the output")
        losses = loss(output, labels)
        if not isinstance(losses, Tensor) or losses.shape != (inputs.shape[0],):
            raise NormGradError(f"the loss must give one value per example, shape ({inputs.shape[0]},)")
        if needs_batchnorm_guard(model, inputs.shape[0]):
            guard_batchnorm_backward(losses)
        grads = torch.autograd.grad(losses.sum(), [probe.edge for probe in probes], allow_unused=True)
    return [probe.result(grad) for probe, grad in zip(probes, grads)]


def _hook(probe: _Probe):
    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        probe.capture(inputs, output)

    return hook


__all__ = ["INFLUENCE_EXTRACTS", "Captured", "LayerChoice", "Loss", "choose_layers", "cross_entropy", "one_pass", "positions"]
