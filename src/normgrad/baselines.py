"""Comparison methods from Captum, with normgrad's target conventions; and trivial baselines.

Every function has the registry signature ``(model, inputs, target=None, *,
layers=None, **options) -> {name: (N, 1, h, w) map}``; input-level methods
return ``{"input": map}``.  They run in eval mode and leave the model as it
was.  Targets: ``None`` (predicted class), class indices, a callable
``output -> (N,)`` and :class:`~normgrad.targets.TrainingLoss`.

========================  =====================================  ==========================
name                      Captum                                 map
========================  =====================================  ==========================
``gradient``              ``Saliency``                           ``max_c |∂J/∂x_c|``
``input_x_gradient``      ``InputXGradient``                     ``Σ_c x_c ∂J/∂x_c``
``guided_backprop``       ``GuidedBackprop``                     ``max_c |guided grad|``
``integrated_gradients``  ``IntegratedGradients`` (baseline 0)   ``Σ_c attribution_c``
``gradcam``               ``LayerGradCam`` (per layer, ReLU)     Grad-CAM at each layer
``center``                —                                      ``max‖·‖ − ‖u − (H//2, W//2)‖``
``random``                —                                      uniform noise (seeded)
========================  =====================================  ==========================
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from normgrad.engine.layers import Layers, select_layers
from normgrad.engine.layouts import Evidence, activation_of, decide_layout, sizes_of
from normgrad.engine.model_state import Hooks, eval_mode
from normgrad.engine.single_pass import check_inputs
from normgrad.engine.workarounds import guard_batchnorm_backward, needs_batchnorm_guard
from normgrad.errors import NormGradError
from normgrad.outputs import unwrap
from normgrad.segmentation import Region
from normgrad.targets import Objective, Target, TrainingLoss, Unit, class_indices


def _captum():
    try:
        import captum.attr
    except ImportError as error:
        raise NormGradError("this method needs Captum: pip install 'normgrad[captum]'") from error
    return captum.attr


def captum_target(model: Callable, inputs: Tensor, target: Target) -> tuple[Callable, Any]:
    """A Captum ``(forward_func, target)`` pair for a normgrad target spec; the rules are :mod:`normgrad.targets`' own.

    Class targets (``None``, indices) become Captum's class index, checked
    on the clean ``inputs``; every other objective becomes a forward
    function returning ``J`` per sample, with ``TrainingLoss`` labels fixed
    on the clean inputs (Captum also calls it on perturbed ones).
    """
    if isinstance(target, Unit):
        raise NormGradError("Unit targets work with the NormGrad engine methods only (normgrad, selective, extract+aggregate, meta)")
    with torch.no_grad():
        output = model(inputs)
    if isinstance(target, TrainingLoss):
        target = TrainingLoss(class_indices(target.labels, output, "TrainingLoss labels"))
    elif not isinstance(target, Region) and (not callable(target) or isinstance(target, Tensor)):
        forward = model if unwrap(output) is output else (lambda x: unwrap(model(x)))  # a Hugging Face ModelOutput: its logits
        return forward, class_indices(target, output)  # type: ignore[arg-type]
    objective = Objective(target)
    return (lambda x: objective.scores(model(x), None, x.shape[0], tuple(x.shape[-2:]))), None


def _input_method(
    build: Callable[[Any, Any], Any], reduce: Callable[[Tensor], Tensor], needs_module: bool = False, **attribute_options: Any
):
    """A registry method from a Captum input attribution: ``build(captum.attr, forward)``, reduced over channels."""

    def method(
        model: nn.Module, inputs: Tensor, target: Target = None, *, layers: Layers | None = None, **options: Any
    ) -> dict[str, Tensor]:
        check_inputs(inputs)
        attr = _captum()
        with torch.inference_mode(False), torch.enable_grad(), eval_mode(model), Hooks() as hooks:
            if needs_batchnorm_guard(model, inputs.shape[0]):  # PyTorch's batch-1 BatchNorm backward bug (engine.workarounds)
                hooks.add(model.register_forward_hook(_guard_output))
            forward, captum_target_ = captum_target(model, inputs, target)
            explainer = build(attr, model if needs_module else forward)
            attribution = explainer.attribute(
                inputs.detach().clone().requires_grad_(True), target=captum_target_, **{**attribute_options, **options}
            )
        return {"input": reduce(attribution.detach()).float()}

    return method


def _guard_output(module: nn.Module, inputs: tuple, output: Any) -> None:
    """Forward hook: the BatchNorm backward workaround on the graph behind the model's output."""
    if isinstance(output, Tensor) and output.grad_fn is not None:
        guard_batchnorm_backward(output)


def _abs_max(attribution: Tensor) -> Tensor:
    return attribution.abs().amax(1, keepdim=True)


def _channel_sum(attribution: Tensor) -> Tensor:
    return attribution.sum(1, keepdim=True)


gradient = _input_method(lambda attr, f: attr.Saliency(f), _abs_max, abs=True)
input_x_gradient = _input_method(lambda attr, f: attr.InputXGradient(f), _channel_sum)
_guided_backprop = _input_method(lambda attr, m: attr.GuidedBackprop(m), _abs_max, needs_module=True)  # hooks the model's ReLUs


def guided_backprop(
    model: nn.Module, inputs: Tensor, target: Target = None, *, layers: Layers | None = None, **options: Any
) -> dict[str, Tensor]:
    """Captum's GuidedBackprop; it changes ``nn.ReLU`` modules only, so warn when the model has none (ReLU6, SiLU, GELU...)."""
    if not any(isinstance(m, nn.ReLU) for m in model.modules()):
        warnings.warn(
            "guided backprop (Captum) only modifies nn.ReLU modules and this model has none: the result equals the plain gradient",
            stacklevel=2,
        )
    return _guided_backprop(model, inputs, target, layers=layers, **options)


integrated_gradients = _input_method(
    lambda attr, f: attr.IntegratedGradients(f), _channel_sum, n_steps=32, internal_batch_size=16
)  # bounded memory


def gradcam(model: nn.Module, inputs: Tensor, target: Target = None, *, layers: Layers, **options: Any) -> dict[str, Tensor]:
    """Captum's ``LayerGradCam`` (ReLU on the result) at each layer: one pass per layer.

    Captum averages the gradient over dimensions 2 and up, which is right
    for (N, C, H, W) only; every other layout (channels last, tokens) is
    shown to Captum as (N, C, h, w) through an identity module placed
    after the layer, in the layout the engine decides.
    """
    check_inputs(inputs, model)
    attr = _captum()
    evidence = Evidence.of(model, inputs)
    maps = {}
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
        forward, captum_target_ = captum_target(model, inputs, target)
        for name, module in select_layers(model, layers):
            if module is None:
                raise NormGradError("Grad-CAM needs a layer inside the network, not the input")
            grid_view = nn.Identity()
            with Hooks() as hooks:
                hooks.add(module.register_forward_hook(_through_grid_view(grid_view, evidence, name)))
                explainer = attr.LayerGradCam(_guarded(forward) if needs_batchnorm_guard(model, inputs.shape[0]) else forward, grid_view)
                result = explainer.attribute(inputs.detach().clone(), target=captum_target_, relu_attributions=True, **options)
            maps[name] = result.detach().float()
    return maps


def _through_grid_view(grid_view: nn.Module, evidence: Evidence, name: str):
    """A forward hook that routes a layer's output through ``grid_view`` as (N, C, h, w) and back (same values)."""

    def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
        activation = activation_of(output)
        if activation is None:
            raise NormGradError(f"Grad-CAM at {name!r}: the layer outputs a {type(output).__name__}, not a tensor")
        layout = decide_layout(activation, module, evidence, f"layer {name!r}", sizes_of(output))
        viewed = layout.from_nchw(grid_view(layout.to_nchw(activation)), activation)
        return viewed if activation is output else type(output)([viewed, *output[1:]])

    return hook


def _guarded(forward: Callable) -> Callable:
    """``forward`` whose output graph carries the BatchNorm backward workaround (engine.workarounds)."""

    def guarded(x: Tensor) -> Any:
        output = forward(x)
        if isinstance(output, Tensor):
            guard_batchnorm_backward(output)
        return output

    return guarded


def center(model: nn.Module, inputs: Tensor, target: Target = None, *, layers: Layers | None = None, **options: Any) -> dict[str, Tensor]:
    """The centre baseline: a map whose unique maximum is the pixel (H // 2, W // 2), i.e. the point (W/2, H/2)."""
    check_inputs(inputs)
    n, _, height, width = inputs.shape[0], inputs.shape[1], *inputs.shape[-2:]
    rows = torch.arange(height, dtype=torch.float32, device=inputs.device) - height // 2
    cols = torch.arange(width, dtype=torch.float32, device=inputs.device) - width // 2
    distance = (rows[:, None] ** 2 + cols[None, :] ** 2).sqrt()
    frames = tuple(inputs.shape[2:-2])  # videos and volumes: the same centre in every frame
    return {"input": (distance.max() - distance).expand(n, 1, *frames, height, width).clone()}  # non-negative, peak at the centre


def random(
    model: nn.Module, inputs: Tensor, target: Target = None, *, layers: Layers | None = None, seed: int = 0, **options: Any
) -> dict[str, Tensor]:
    """Uniform random maps (seeded, reproducible): the floor any method must beat."""
    check_inputs(inputs)
    generator = torch.Generator().manual_seed(seed)
    return {"input": torch.rand(inputs.shape[0], 1, *inputs.shape[2:], generator=generator).to(inputs.device)}
