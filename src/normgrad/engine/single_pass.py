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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from normgrad.engine.layers import Layers, select_layers
from normgrad.engine.model_state import Hooks, eval_mode
from normgrad.errors import NormGradError
from normgrad.formulas.aggregate import check_aggregate
from normgrad.formulas.extract import Extract, ForwardRecord, get_extract
from normgrad.formulas.layout import SUPPORTED_ACTIVATIONS
from normgrad.targets import Objective, Target


@dataclass
class Probe:
    """One requested layer: what its forward hook recorded."""

    name: str
    module: nn.Module | None
    record: ForwardRecord | None = None
    edge: GradientEdge | None = None
    output_shape: torch.Size | None = None
    output_dtype: torch.dtype | None = None
    calls: int = 0

    def capture(self, extract: Extract, aggregate: str, inputs: tuple, output: Any) -> None:
        self.calls += 1
        if self.calls > 1:
            parent = self.name.rpartition(".")[0] or "a module that runs once"
            raise NormGradError(
                f"layer {self.name!r} runs more than once in one forward pass (a shared module), so its activation is "
                f"ambiguous; select a module that runs once, such as {parent!r}"
            )
        if not isinstance(output, Tensor) or not output.is_floating_point():
            kind = f"a {output.dtype} tensor" if isinstance(output, Tensor) else f"a {type(output).__name__}"
            raise NormGradError(f"layer {self.name!r} outputs {kind}; supported: a float {SUPPORTED_ACTIVATIONS}")
        if not output.requires_grad:
            raise NormGradError(
                f"layer {self.name!r}: its output does not depend on the input through autograd (detached or computed under no_grad)"
            )
        detached_inputs = tuple(x.detach() if isinstance(x, Tensor) else x for x in inputs)
        with torch.no_grad():  # statistics are values, not part of the graph
            self.record = extract.forward_record(aggregate, self.module, detached_inputs, output.detach(), f"layer {self.name!r}")
        self.edge = get_gradient_edge(output)
        self.output_shape, self.output_dtype = output.shape, output.dtype


def check_inputs(inputs: Any) -> None:
    """Inputs must be a float tensor (N, C, H, W)."""
    if not isinstance(inputs, Tensor):
        raise NormGradError(f"inputs must be a torch.Tensor of shape (N, C, H, W); got {type(inputs).__name__}")
    if inputs.dim() != 4:
        raise NormGradError(f"inputs must have shape (N, C, H, W); got {tuple(inputs.shape)} (add a batch dimension with x[None])")
    if not inputs.is_floating_point():
        raise NormGradError(f"inputs must be a float tensor (preprocessed images); got {inputs.dtype}")


def run_saliency(
    model: nn.Module,
    inputs: Tensor,
    target: Target,
    layers: Layers,
    extract: str,
    aggregate: str,
) -> dict[str, Tensor]:
    """The maps of ``layers`` for one extract × aggregate, in one forward/backward pass."""
    check_inputs(inputs)
    check_aggregate(aggregate)
    extract_impl = get_extract(extract)
    selected = select_layers(model, layers)
    for name, module in selected:
        extract_impl.check_module(name, module)
    objective = Objective(target)
    unit_module = None
    if objective.unit is not None:
        [(_, unit_module)] = select_layers(model, [objective.unit.layer])
    probes = [Probe(name, module) for name, module in selected]

    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model), Hooks() as hooks:
        leaf = inputs.detach().clone().requires_grad_(True)
        image = leaf.clone()  # a non-leaf: the model may modify its input in place
        unit_values: list[Tensor] = []
        for probe in probes:
            if probe.module is None:
                probe.capture(extract_impl, aggregate, (), image)
            else:
                hooks.add(probe.module.register_forward_hook(_capture_hook(probe, extract_impl, aggregate)))
        if objective.unit is not None:
            if unit_module is None:
                unit_values.append(objective.unit.read(image))
            else:
                hooks.add(unit_module.register_forward_hook(_unit_hook(objective, unit_values)))

        output = model(image)

        silent = [probe.name for probe in probes if probe.calls == 0]
        if silent:
            raise NormGradError(
                f"layer(s) {', '.join(map(repr, silent))} never ran in the forward pass; choose layers that compute the output"
            )
        if objective.unit is not None and not unit_values:
            raise NormGradError(f"target unit layer {objective.unit.layer!r} never ran in the forward pass")
        scores = objective.scores(output, unit_values[0] if unit_values else None, inputs.shape[0])
        if not scores.requires_grad:
            raise NormGradError("the objective does not depend on the input through autograd")
        del output, unit_values
        grads = list(torch.autograd.grad(scores.sum(), [probe.edge for probe in probes], allow_unused=True))

    maps: dict[str, Tensor] = {}
    for index, probe in enumerate(probes):
        grad, grads[index] = grads[index], None
        if grad is None:  # the layer does not influence the objective
            grad = torch.zeros(probe.output_shape, dtype=probe.output_dtype, device=inputs.device)
        assert probe.record is not None
        saliency_map = extract_impl.saliency(aggregate, probe.record, grad, f"layer {probe.name!r}")
        maps[probe.name] = saliency_map.float().contiguous()
        probe.record = None
    return maps


def _capture_hook(probe: Probe, extract: Extract, aggregate: str):
    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        probe.capture(extract, aggregate, inputs, output)

    return hook


def _unit_hook(objective: Objective, unit_values: list[Tensor]):
    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        assert objective.unit is not None
        if unit_values:
            raise NormGradError(
                f"target unit layer {objective.unit.layer!r} runs more than once in one forward pass; pick a module that runs once"
            )
        if not isinstance(output, Tensor):
            raise NormGradError(
                f"target unit layer {objective.unit.layer!r} outputs a {type(output).__name__}; supported: {SUPPORTED_ACTIVATIONS}"
            )
        unit_values.append(objective.unit.read(output))

    return hook


__all__ = ["Probe", "check_inputs", "run_saliency"]
