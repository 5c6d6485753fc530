"""NormGrad inside Captum: :class:`LayerNormGrad`, a Captum layer attribution.

>>> from normgrad.captum import LayerNormGrad
>>> attribution = LayerNormGrad(model, model.layer3).attribute(x, target=281)   # (N, 1, h, w)
>>> upsampled = LayerNormGrad.interpolate(attribution, x.shape[-2:], "bilinear")

Any extract × aggregate of the engine is available through ``extract=`` and
``aggregate=``; the result equals ``ng.saliency(model, x, target,
layers=[layer], extract=..., aggregate=...)``.
"""

from __future__ import annotations

from typing import Any

from captum.attr import GradientAttribution, LayerAttribution
from torch import Tensor, nn

from normgrad.errors import NormGradError
from normgrad.methods import saliency


class _ForwardModule(nn.Module):
    """A forward function with extra arguments as a module that owns the layer (for naming and hooks)."""

    def __init__(self, forward_func: Any, layer: nn.Module, extra_args: tuple) -> None:
        super().__init__()
        object.__setattr__(self, "forward_func", forward_func)
        self.target_layer = layer
        self.extra_args = extra_args

    def forward(self, inputs: Tensor) -> Any:
        return self.forward_func(inputs, *self.extra_args)

    def modules(self):  # type: ignore[override]
        if isinstance(self.forward_func, nn.Module):  # eval mode over the whole model
            return self.forward_func.modules()
        return super().modules()


class LayerNormGrad(LayerAttribution, GradientAttribution):
    """NormGrad (and the whole extract × aggregate framework) at one layer, Captum style."""

    def __init__(self, forward_func: Any, layer: nn.Module, device_ids: list[int] | None = None) -> None:
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)

    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: Any = None,
        additional_forward_args: Any = None,
        extract: str = "conv1x1",
        aggregate: str = "norm",
    ) -> Tensor:
        """The (N, 1, h, w) map of ``layer``; targets as in Captum (int, list, tensor) or normgrad's."""
        if isinstance(inputs, tuple):
            if len(inputs) != 1:
                raise NormGradError("LayerNormGrad takes one input tensor (N, C, H, W)")
            (inputs,) = inputs
        extra = additional_forward_args
        extra = () if extra is None else (tuple(extra) if isinstance(extra, (tuple, list)) else (extra,))
        model = self.forward_func
        owns_layer = isinstance(model, nn.Module) and any(m is self.layer for m in model.modules())
        if not owns_layer or extra:
            model = _ForwardModule(self.forward_func, self.layer, extra)
        maps = saliency(model, inputs, target, layers=[self.layer], extract=extract, aggregate=aggregate)
        return next(iter(maps.values()))

    @property
    def multiplies_by_inputs(self) -> bool:
        return False
