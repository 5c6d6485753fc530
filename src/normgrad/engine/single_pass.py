"""The engine: every requested map from one forward and one backward pass.

1. Forward hooks on the chosen modules take the activation-side statistics
   right away (before any in-place operation can overwrite the tensor) and
   the tensor's *gradient edge* — the autograd node that produced it.
2. The objective ``J`` (one score per sample) is summed over the batch;
   samples are independent in eval mode, so a batch equals its images.
3. One ``torch.autograd.grad(J, edges)``: gradients with respect to the
   chosen activations only — no weight gradient, nothing in ``param.grad``.
   Taking the edge captured before an in-place ReLU gives ``∂J/∂a`` of the
   value the hook saw, so in-place layers are safe without copying.

Each layer has its own extract × aggregate (``per_layer``), so maps of
different methods at different layers (the explain default) still take one
forward and one backward.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from normgrad.engine.default_layers import nearest_grid_layer
from normgrad.engine.layers import Layers, resolve_layers, select_layers
from normgrad.engine.layouts import Evidence, LayoutError, activation_of, decide_layout, sizes_of
from normgrad.engine.model_state import Hooks, eval_mode
from normgrad.engine.workarounds import guard_batchnorm_backward, needs_batchnorm_guard
from normgrad.errors import NormGradError, did_you_mean
from normgrad.formulas.aggregate import AGGREGATES, check_aggregate
from normgrad.formulas.extract import EXTRACTS, Extract, ForwardRecord, get_extract
from normgrad.formulas.layout import SUPPORTED_ACTIVATIONS, Layout
from normgrad.targets import Objective, Target


@dataclass
class Probe:
    """One requested layer: what its forward hook recorded (or, for a layer matched by type, why it was skipped)."""

    name: str
    module: nn.Module | None
    extract: Extract
    aggregate: str
    explicit: bool = True
    record: ForwardRecord | None = None
    edge: GradientEdge | None = None
    output_shape: torch.Size | None = None
    output_dtype: torch.dtype | None = None
    calls: int = 0
    skipped: str = ""

    def capture(self, evidence: Evidence, inputs: tuple, output: Any) -> None:
        self.calls += 1
        try:
            if self.calls > 1:
                parent = self.name.rpartition(".")[0] or "a module that runs once"
                raise NormGradError(
                    f"layer {self.name!r} runs more than once in one forward pass (a shared module), so its activation is "
                    f"ambiguous; select a module that runs once, such as {parent!r}"
                )
            activation = activation_of(output)
            if activation is None or not activation.is_floating_point():
                kind = f"a {activation.dtype} tensor" if activation is not None else f"a {type(output).__name__}"
                raise NormGradError(
                    f"layer {self.name!r} outputs {kind}; supported: a float tensor {SUPPORTED_ACTIVATIONS} "
                    "(or a tuple of one such tensor and non-tensor metadata)"
                )
            sizes, output = sizes_of(output), activation
            if not output.requires_grad:
                raise NormGradError(
                    f"layer {self.name!r}: its output does not depend on the input through autograd (detached or computed under no_grad)"
                )
            layout = decide_layout(output, self.module, evidence, f"layer {self.name!r}", sizes)
            detached_inputs = tuple(x.detach() if isinstance(x, Tensor) else x for x in inputs)
            with torch.no_grad():  # statistics are values, not part of the graph
                self.record = self.extract.forward_record(
                    self.aggregate, self.module, detached_inputs, output.detach(), layout, f"layer {self.name!r}"
                )
        except NormGradError as error:
            if self.explicit:
                raise
            self.skip(str(error))
            return
        self.edge = get_gradient_edge(output)
        self.output_shape, self.output_dtype = output.shape, output.dtype

    def skip(self, reason: str) -> None:
        self.skipped = reason
        self.record = self.edge = None


def check_inputs(inputs: Any, model: nn.Module | None = None) -> None:
    """Inputs: a float tensor of images (N, C, H, W) or videos / volumes (N, C, T, H, W); errors tell a missing batch dimension."""
    if not isinstance(inputs, Tensor):
        raise NormGradError(f"inputs must be a torch.Tensor of shape (N, C, H, W); got {type(inputs).__name__}")
    if inputs.dim() not in (4, 5):
        raise NormGradError(_not_images_message(tuple(inputs.shape), model))
    if inputs.dim() == 4 and model is not None and isinstance(_first_convolution(model), nn.Conv3d):  # Conv3d takes (C, T, H, W) unbatched
        raise NormGradError(_not_images_message(tuple(inputs.shape), model))
    if not inputs.is_floating_point():
        raise NormGradError(f"inputs must be a float tensor (preprocessed images); got {inputs.dtype}")


def _not_images_message(shape: tuple[int, ...], model: nn.Module | None) -> str:
    message = f"inputs must be images of shape (N, C, H, W); got a {len(shape)}-D tensor {shape}"
    first = _first_convolution(model) if model is not None else None
    if len(shape) == 3 and isinstance(first, nn.Conv2d) and shape[0] == first.in_channels:
        return f"{message}: one image (C, H, W) needs a batch dimension, x[None]"
    if len(shape) == 4 and isinstance(first, nn.Conv3d):
        hint = ": one clip (C, T, H, W) needs a batch dimension, x[None]" if shape[0] == first.in_channels else ""
        return f"inputs of a 3-D model (its first convolution is a Conv3d) must be videos or volumes (N, C, T, H, W); got {shape}{hint}"
    if len(shape) == 3:
        return (
            f"{message}: a sequence (N, C, L) of a 1-D model has no image grid, and normgrad's maps are 2-D (N, 1, h, w); "
            "1-D models are not supported"
        )
    return message


def _first_convolution(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)


PerLayer = Mapping[str, tuple[str, str]]


def run_saliency(
    model: nn.Module,
    inputs: Tensor,
    target: Target,
    layers: Layers,
    extract: str,
    aggregate: str,
    per_layer: PerLayer | None = None,
) -> dict[str, Tensor]:
    """The maps of ``layers`` in one forward/backward pass: ``extract`` × ``aggregate``, or ``per_layer[name]`` for the layers it names."""
    check_inputs(inputs, model)
    check_aggregate(aggregate)
    get_extract(extract)
    selected = resolve_layers(model, layers)
    pairs = check_per_layer(per_layer, [chosen.name for chosen in selected])
    probes = []
    for chosen in selected:
        layer_extract, layer_aggregate = pairs.get(chosen.name, (extract, aggregate))
        probes.append(Probe(chosen.name, chosen.module, get_extract(layer_extract), layer_aggregate, chosen.explicit))
    for probe in probes:
        try:
            probe.extract.check_module(probe.name, probe.module)
        except NormGradError as error:
            if probe.explicit:
                raise
            probe.skip(str(error))
    objective = Objective(target)
    unit_module = None
    if objective.unit is not None:
        [(_, unit_module)] = select_layers(model, [objective.unit.layer])
    evidence = Evidence.of(model, inputs)
    try:
        maps = _one_pass(model, inputs, objective, unit_module, probes, evidence)
    except LayoutError as error:
        raise _with_grid_suggestion(error, model, inputs, probes) from None
    skipped = [probe for probe in probes if probe.skipped]
    if skipped:
        warnings.warn(_skipped_message(skipped, len(maps)), stacklevel=3)
    return maps


def _one_pass(
    model: nn.Module,
    inputs: Tensor,
    objective: Objective,
    unit_module: nn.Module | None,
    probes: list[Probe],
    evidence: Evidence,
) -> dict[str, Tensor]:
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model), Hooks() as hooks:
        leaf = inputs.detach().clone().requires_grad_(True)
        image = leaf.clone()  # a non-leaf: the model may modify its input in place
        unit_values: list[Tensor] = []
        for probe in probes:
            if probe.skipped:
                continue
            if probe.module is None:
                probe.capture(evidence, (), image)
            else:
                hooks.add(probe.module.register_forward_hook(_capture_hook(probe, evidence)))
        if objective.unit is not None:
            if unit_module is None:
                unit_values.append(objective.unit.read(image, Layout("nchw", evidence.grid)))
            else:
                hooks.add(unit_module.register_forward_hook(_unit_hook(objective, unit_values, evidence)))

        output = model(image)

        for probe in probes:
            if probe.calls == 0 and not probe.skipped:
                if probe.explicit:
                    raise NormGradError(f"layer {probe.name!r} never ran in the forward pass; choose layers that compute the output")
                probe.skip("never runs in the forward pass")
        active = [probe for probe in probes if not probe.skipped]
        if not active:
            raise NormGradError(_skipped_message(probes, 0))
        if objective.unit is not None and not unit_values:
            raise NormGradError(f"target unit layer {objective.unit.layer!r} never ran in the forward pass")
        scores = objective.scores(output, unit_values[0] if unit_values else None, inputs.shape[0], tuple(inputs.shape[-2:]))
        if not scores.requires_grad:
            raise NormGradError("the objective does not depend on the input through autograd")
        del output, unit_values
        if needs_batchnorm_guard(model, inputs.shape[0]):
            guard_batchnorm_backward(scores)
        grads = list(torch.autograd.grad(scores.sum(), [probe.edge for probe in active], allow_unused=True))

    maps: dict[str, Tensor] = {}
    for index, probe in enumerate(active):
        grad, grads[index] = grads[index], None
        if grad is None:  # the layer does not influence the objective
            grad = torch.zeros(probe.output_shape, dtype=probe.output_dtype, device=inputs.device)
        assert probe.record is not None
        saliency_map = probe.extract.saliency(probe.aggregate, probe.record, grad, f"layer {probe.name!r}")
        maps[probe.name] = saliency_map.float().contiguous()
        probe.record = None
    return maps


def check_per_layer(per_layer: PerLayer | None, selected: list[str]) -> dict[str, tuple[str, str]]:
    """``per_layer`` checked: ``{layer name: (extract, aggregate)}`` for selected layers, with known extracts and aggregates."""
    if per_layer is None:
        return {}
    if not isinstance(per_layer, Mapping):
        raise NormGradError(f"per_layer must map layer names to (extract, aggregate) pairs; got a {type(per_layer).__name__}")
    pairs: dict[str, tuple[str, str]] = {}
    for name, pair in per_layer.items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
            raise NormGradError(
                f"per_layer[{name!r}] must be an (extract, aggregate) pair of names such as ('scaling', 'sum'); got {pair!r}"
            )
        extract, aggregate = pair
        for what, part, valid in (("extract", extract, EXTRACTS), ("aggregate", aggregate, AGGREGATES)):
            if part not in valid:
                hint = did_you_mean(part, valid, n=3)
                raise NormGradError(f"per_layer[{name!r}]: unknown {what} {part!r}{hint}; valid {what}s: {', '.join(valid)}")
        if name not in selected:
            raise NormGradError(
                f"per_layer names {name!r}, which is not among the selected layers{did_you_mean(str(name), selected, n=3)}; selected: "
                f"{', '.join(selected[:12])}{', ...' if len(selected) > 12 else ''}"
            )
        pairs[name] = (extract, aggregate)
    return pairs


def _skipped_message(skipped: list[Probe], kept: int) -> str:
    lines = "; ".join(f"{probe.name}: {probe.skipped}" for probe in skipped[:8])
    more = f"; and {len(skipped) - 8} more" if len(skipped) > 8 else ""
    head = f"{len(skipped)} layer(s) matched by type or pattern have no map and were skipped ({kept} kept)"
    return f"{head}: {lines}{more}" if kept else f"none of the selected layers has a map: {lines}{more}"


def _with_grid_suggestion(error: LayoutError, model: nn.Module, inputs: Tensor, probes: list[Probe]) -> NormGradError:
    """Name a module near the failing layer whose output is on the image grid (one extra no-grad pass, on errors only)."""
    failing = next((probe.name for probe in probes if f"layer {probe.name!r}" in str(error)), None)
    suggestion = nearest_grid_layer(model, inputs[:1], failing) if failing else None
    hint = f"; for example {suggestion!r}, which is on the image grid" if suggestion else ""
    return NormGradError(f"{error}{hint} (`normgrad layers MODEL` shows every layer's layout)")


def _capture_hook(probe: Probe, evidence: Evidence):
    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        probe.capture(evidence, inputs, output)

    return hook


def _unit_hook(objective: Objective, unit_values: list[Tensor], evidence: Evidence):
    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        unit = objective.unit
        assert unit is not None
        if unit_values:
            raise NormGradError(f"target unit layer {unit.layer!r} runs more than once in one forward pass; pick a module that runs once")
        activation = activation_of(output)
        if activation is None:
            raise NormGradError(f"target unit layer {unit.layer!r} outputs a {type(output).__name__}; supported: {SUPPORTED_ACTIVATIONS}")
        layout = decide_layout(activation, module, evidence, f"target unit layer {unit.layer!r}", sizes_of(output))
        unit_values.append(unit.read(activation, layout))

    return hook


__all__ = ["PerLayer", "Probe", "check_inputs", "check_per_layer", "run_saliency"]
