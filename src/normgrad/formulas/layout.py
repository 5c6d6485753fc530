"""Activation layouts: where the channels and the image grid are, and the view as (N, C, h, w).

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KINDS: tuple[str, ...] = ("nchw", "nhwc", "tokens", "flat", "vector")


@dataclass(frozen=True)
class Layout:
    """The layout of one activation: its kind, its h × w grid and, for tokens, the prefix count."""

    kind: str
    grid: tuple[int, int] = (1, 1)
    prefix: int = 0

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind

    @property
    def channels_last(self) -> bool:
        """True when the channels are the last dimension (what ``nn.Linear`` acts on)."""
        return self.kind in ("nhwc", "tokens", "vector")

    def to_nchw(self, tensor: Tensor) -> Tensor:
        """View ``tensor`` (this layout, any channel count) as (N, C, h, w); a copy only for tokens and ``flat``."""
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

    def __str__(self) -> str:
        height, width = self.grid
        if self.kind == "vector":
            return "(N, C) vector"
        if self.kind == "tokens":
            prefix = f"{self.prefix} + " if self.prefix else ""
            return f"(N, T, C) tokens {prefix}{height}×{width}"
        names = {"nchw": "(N, C, H, W)", "nhwc": "(N, H, W, C)", "flat": "(N, C, H·W)"}
        return f"{names[self.kind]} {height}×{width}"


SUPPORTED_ACTIVATIONS = (
    "(N, C, H, W), channels-last (N, H, W, C), tokens (N, T, C) on the input's patch grid, (N, C, H·W) or (N, C) vectors, "
    "with the batch as the first dimension"
)
