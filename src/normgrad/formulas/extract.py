"""The extracts: which per-location gradient contribution is aggregated.

Every extract is an outer product ``p qᵀ`` per location and per group of
channels (see :mod:`normgrad.formulas.aggregate`), with ``p`` the gradient
``g_u = ∂J/∂y_u`` at the layer output and ``q`` taken from the activation:

================  ======  =============================  ====================================
extract           groups  ``q``                          contribution at ``u``
================  ======  =============================  ====================================
``scaling``       C       ``a_u``                        ``a_u ⊙ g_u`` (diagonal virtual layer)
``conv1x1``       1       ``a_u``                        ``g_u a_uᵀ`` (virtual identity 1×1)
``conv3x3``       1       3×3 patch of ``a``             ``g_u P_u(a)ᵀ`` (virtual 3×3, pad 1)
``depthwise3x3``  C       3×3 patch of ``a_c``           ``g_{u,c} P_u(a_c)`` (virtual depthwise)
``bias``          1       ``1``                          ``g_u`` (virtual bias)
``layer``         layer's patch of the layer input x     ``g_u^(j) P_u(x^(j))ᵀ`` (real weights)
================  ======  =============================  ====================================

The statistics of ``q`` are taken in the forward hook, before any in-place
operation can overwrite the activation; those of ``p`` after the backward.

On videos and volumes (a t × h × w grid) everything is the same with one
more axis: the 3×3 extracts are 3×3×3 (padding 1 on every axis) and
``layer`` reads a ``Conv3d``'s own window; maps are (N, 1, t, h, w).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normgrad.errors import NormGradError
from normgrad.formulas.aggregate import Stats, channel_stats, outer_aggregate, product_aggregate, working_dtype
from normgrad.formulas.layout import Layout
from normgrad.formulas.patches import CONV3X3, Window, conv_window

EXTRACTS: tuple[str, ...] = ("scaling", "conv1x1", "conv3x3", "depthwise3x3", "bias", "layer")


@dataclass
class ForwardRecord:
    """What the forward hook keeps of a layer: the statistics of ``q`` and the layout of the output.

    ``elementwise`` records (the ``scaling`` extract) keep ``q`` itself, a copy
    of the activation: ``a ⊙ g`` is then aggregated directly, which needs one
    activation-sized tensor instead of one per statistic.
    """

    q_stats: Stats
    groups: int
    layout: Layout
    elementwise: bool = False


class Extract:
    """One extract: statistics of ``q`` at forward time, the map once ``g`` is known."""

    name: str

    def check_module(self, name: str, module: nn.Module | None) -> None:
        """Raise a clear error if this extract cannot be applied to ``module``."""

    def forward_record(
        self, aggregate: str, module: nn.Module | None, inputs: tuple, output: Tensor, layout: Layout, where: str
    ) -> ForwardRecord:
        """Statistics of ``q`` from the layer's inputs and output, whose layout the engine decided."""
        raise NotImplementedError

    def saliency(self, aggregate: str, record: ForwardRecord, grad_output: Tensor, where: str) -> Tensor:
        """The (N, 1, h, w) or (N, 1, t, h, w) map from the forward record and ``g = ∂J/∂output`` (same layout as the output)."""
        grad = record.layout.to_nchw(grad_output)
        if record.elementwise:
            (activation,) = record.q_stats
            return product_aggregate(aggregate, grad, activation)
        p_stats = channel_stats(grad, aggregate, record.groups)
        return outer_aggregate(aggregate, p_stats, record.q_stats)


@dataclass
class VirtualExtract(Extract):
    """A virtual layer inserted after the activation: the network's function is unchanged."""

    name: str
    per_channel: bool
    window: Window
    uses_activation: bool = True

    def forward_record(
        self, aggregate: str, module: nn.Module | None, inputs: tuple, output: Tensor, layout: Layout, where: str
    ) -> ForwardRecord:
        activation = layout.to_nchw(output)
        groups = activation.shape[1] if self.per_channel else 1
        if self.per_channel and self.window.is_identity:  # scaling: keep a copy of a, aggregate a ⊙ g later
            copy = activation.untyped_storage().data_ptr() == output.untyped_storage().data_ptr()  # in-place layers may follow
            return ForwardRecord((activation.to(working_dtype(activation), copy=copy),), groups, layout, elementwise=True)
        if self.uses_activation:
            window = self.window.in_dims(activation.dim() - 2)  # 3×3 on images, 3×3×3 on videos and volumes
            q_stats = window.pool(channel_stats(activation, aggregate, groups), aggregate)
        else:  # the virtual bias multiplies a constant 1
            ones = torch.ones((activation.shape[0], 1, *activation.shape[2:]), dtype=working_dtype(activation), device=activation.device)
            q_stats = channel_stats(ones, aggregate, 1)
        return ForwardRecord(q_stats, groups, layout)


class LayerExtract(Extract):
    """The layer's own weight gradient: ``Conv2d`` / ``Conv3d`` (any window, groups) or ``Linear``."""

    name = "layer"

    def check_module(self, name: str, module: nn.Module | None) -> None:
        if not isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            kind = "the input image" if module is None else type(module).__name__
            raise NormGradError(
                f"extract='layer' needs a layer with weights (Conv2d, Conv3d or Linear and their subclasses); "
                f"{name!r} is {kind}. Use a virtual extract ({', '.join(e for e in EXTRACTS if e != 'layer')}) there"
            )

    def forward_record(
        self, aggregate: str, module: nn.Module | None, inputs: tuple, output: Tensor, layout: Layout, where: str
    ) -> ForwardRecord:
        layer_input = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
        if isinstance(module, nn.Linear):  # x and y share their positions: x is read in the layout of y
            if layer_input is None or layer_input.shape[:-1] != output.shape[:-1]:
                raise NormGradError(f"{where}: the Linear input does not have the positions of its output {tuple(output.shape)}")
            return ForwardRecord(channel_stats(layout.to_nchw(layer_input), aggregate, 1), 1, layout)
        assert isinstance(module, (nn.Conv2d, nn.Conv3d))
        dims = 2 if isinstance(module, nn.Conv2d) else 3
        if layer_input is None or layer_input.dim() != dims + 2 or layout.kind != "nchw":
            shape = None if layer_input is None else tuple(layer_input.shape)
            expected = "(N, C, H, W)" if dims == 2 else "(N, C, T, H, W)"
            raise NormGradError(f"{where}: {type(module).__name__} input of shape {shape} is not supported; expected {expected}")
        window = conv_window(module, tuple(layer_input.shape[-dims:]), tuple(output.shape[-dims:]))
        q_stats = window.pool(channel_stats(layer_input, aggregate, module.groups), aggregate)
        return ForwardRecord(q_stats, module.groups, layout)


_REGISTRY: dict[str, Extract] = {
    "scaling": VirtualExtract("scaling", per_channel=True, window=Window()),
    "conv1x1": VirtualExtract("conv1x1", per_channel=False, window=Window()),
    "conv3x3": VirtualExtract("conv3x3", per_channel=False, window=CONV3X3),
    "depthwise3x3": VirtualExtract("depthwise3x3", per_channel=True, window=CONV3X3),
    "bias": VirtualExtract("bias", per_channel=False, window=Window(), uses_activation=False),
    "layer": LayerExtract(),
}


def get_extract(name: str) -> Extract:
    """The extract called ``name``, or a clear error listing the valid ones."""
    if name not in _REGISTRY:
        raise NormGradError(f"unknown extract {name!r}; valid extracts: {', '.join(EXTRACTS)}")
    return _REGISTRY[name]
