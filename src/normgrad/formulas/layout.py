"""Activation layouts: where the channels and the image grid are, and the view as (N, C, h, w) or (N, C, t, h, w).

A layout is decided once per layer, from evidence (:mod:`normgrad.engine.layouts`),
and then used for everything read at that layer: the activation, its
gradient, the layer input of the ``layer`` extract and a target unit.

==========  =================  ========================================================
kind        tensor             view as (N, C, h, w)
==========  =================  ========================================================
``nchw``    (N, C, h, w)       itself (convolutional feature maps)
``nhwc``    (N, h, w, C)       ``permute(0, 3, 1, 2)`` (channels last: Swin, ConvNeXt MLPs)
``tokens``  (N, k + h·w, C)    the h·w grid tokens after ``k`` prefix tokens (class,
                               distillation, registers), row-major on the h × w grid
``flat``    (N, C, h·w)        a channels-first map flattened over its grid
``vector``  (N, C)             (N, C, 1, 1): one location
==========  =================  ========================================================

Prefix tokens have no position on the image: they are left out of the map
(their gradient and activation still take part in everything upstream).

Videos and volumes (inputs (N, C, T, H, W) or (N, C, D, H, W)) have a
three-axis grid ``t × h × w``; every kind reads the same way with one more
grid axis: ``nchw`` is (N, C, t, h, w), ``nhwc`` (N, t, h, w, C), tokens
are ``k + t·h·w`` in raster order (time slowest, as MViT flattens them),
``flat`` is (N, C, t·h·w) and a ``vector`` is one location (N, C, 1, 1, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KINDS: tuple[str, ...] = ("nchw", "nhwc", "tokens", "flat", "vector")


@dataclass(frozen=True)
class Layout:
    """The layout of one activation: its kind, its h × w (or t × h × w) grid and, for tokens, the prefix count."""

    kind: str
    grid: tuple[int, ...] = (1, 1)
    prefix: int = 0

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
        assert len(self.grid) in (2, 3), self.grid

    @property
    def volumetric(self) -> bool:
        """True for a t × h × w grid (videos, volumes)."""
        return len(self.grid) == 3

    @property
    def channels_last(self) -> bool:
        """True when the channels are the last dimension (what ``nn.Linear`` acts on)."""
        return self.kind in ("nhwc", "tokens", "vector")

    def to_nchw(self, tensor: Tensor) -> Tensor:
        """View ``tensor`` (this layout, any channel count) as (N, C, h, w) or (N, C, t, h, w); a copy only for tokens and ``flat``."""
        if self.volumetric:
            return self._to_ncthw(tensor)
        height, width = self.grid
        if self.kind == "nchw":
            return tensor
        if self.kind == "nhwc":
            return tensor.permute(0, 3, 1, 2)
        if self.kind == "tokens":
            grid_tokens = tensor[:, self.prefix :] if self.prefix else tensor
            return grid_tokens.transpose(1, 2).reshape(tensor.shape[0], tensor.shape[2], height, width)
        if self.kind == "flat":
            return tensor.reshape(tensor.shape[0], tensor.shape[1], height, width)
        return tensor[:, :, None, None]  # vector

    def from_nchw(self, grid: Tensor, like: Tensor) -> Tensor:
        """The inverse of :meth:`to_nchw`: ``grid`` (N, C, h, w) back in this layout; prefix tokens taken from ``like``."""
        if self.volumetric and self.kind in ("nhwc", "vector"):
            return grid.permute(0, 2, 3, 4, 1) if self.kind == "nhwc" else grid[:, :, 0, 0, 0]
        if self.kind == "nchw":
            return grid
        if self.kind == "nhwc":
            return grid.permute(0, 2, 3, 1)
        if self.kind == "tokens":
            tokens = grid.flatten(2).transpose(1, 2)
            return torch.cat([like[:, : self.prefix], tokens], dim=1) if self.prefix else tokens
        if self.kind == "flat":
            return grid.flatten(2)
        return grid[:, :, 0, 0]  # vector

    def _to_ncthw(self, tensor: Tensor) -> Tensor:
        """:meth:`to_nchw` for a t × h × w grid."""
        if self.kind == "nchw":
            return tensor
        if self.kind == "nhwc":
            return tensor.permute(0, 4, 1, 2, 3)
        if self.kind == "tokens":
            grid_tokens = tensor[:, self.prefix :] if self.prefix else tensor
            return grid_tokens.transpose(1, 2).reshape(tensor.shape[0], tensor.shape[2], *self.grid)
        if self.kind == "flat":
            return tensor.reshape(tensor.shape[0], tensor.shape[1], *self.grid)
        return tensor[:, :, None, None, None]  # vector

    def __str__(self) -> str:
        size = "×".join(str(side) for side in self.grid)
        if self.kind == "vector":
            return "(N, C) vector"
        if self.kind == "tokens":
            prefix = f"{self.prefix} + " if self.prefix else ""
            return f"(N, T, C) tokens {prefix}{size}"
        if self.volumetric:
            names = {"nchw": "(N, C, T, H, W)", "nhwc": "(N, T, H, W, C)", "flat": "(N, C, T·H·W)"}
        else:
            names = {"nchw": "(N, C, H, W)", "nhwc": "(N, H, W, C)", "flat": "(N, C, H·W)"}
        return f"{names[self.kind]} {size}"


SUPPORTED_ACTIVATIONS = (
    "(N, C, H, W), channels-last (N, H, W, C), tokens (N, T, C) on the input's patch grid, (N, C, H·W) or (N, C) vectors, "
    "with the batch as the first dimension; for videos and volumes (N, C, T, H, W), (N, T, H, W, C) and tokens on the t×h×w grid"
)
