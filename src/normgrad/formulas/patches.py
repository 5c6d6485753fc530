"""Receptive-field patches, reduced without unfolding them.

A convolution's output location ``u`` sees the patch ``P_u(x)`` of its
(padded) input.  Patch-wise sums of a per-location statistic are a box
filter (a convolution with a kernel of ones, same stride and dilation),
patch-wise extremes a max pool; padding is applied to the statistic with
the layer's own padding mode, so zero padding puts zeros into border
patches exactly as the convolution sees them.

Windows have two axes (``Conv2d``, the ``conv3x3`` extracts on images) or
three (``Conv3d``, the 3×3×3 extracts on videos and volumes): the same box
filter and max pool in 3-D (``conv3d``, ``max_pool3d``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from normgrad.errors import NormGradError
from normgrad.formulas.aggregate import NORMS, Stats

Size = tuple[int, ...]  # one entry per grid axis: (h, w) or (t, h, w)


@dataclass(frozen=True)
class Window:
    """A convolution window: kernel, stride, dilation, explicit padding and its mode, over 2 or 3 grid axes.

    ``padding`` is ``(left, right, top, bottom)`` (and ``front, back`` for a
    third axis) as for :func:`torch.nn.functional.pad`: last axis first.
    """

    kernel_size: Size = (1, 1)
    stride: Size = (1, 1)
    dilation: Size = (1, 1)
    padding: Size = (0, 0, 0, 0)
    padding_mode: str = "zeros"

    @property
    def is_identity(self) -> bool:
        return all(k == 1 for k in self.kernel_size) and all(s == 1 for s in self.stride) and not any(self.padding)

    @property
    def dims(self) -> int:
        return len(self.kernel_size)

    def in_dims(self, dims: int) -> Window:
        """This window on a grid of ``dims`` axes: a 3×3 window is 3×3×3 on a volume (same size, stride, padding on every axis)."""
        if dims == self.dims:
            return self
        same = {self.kernel_size[0]} == set(self.kernel_size) and {self.stride[0]} == set(self.stride)
        assert same and {self.dilation[0]} == set(self.dilation) and {self.padding[0]} == set(self.padding), self
        return Window(
            (self.kernel_size[0],) * dims,
            (self.stride[0],) * dims,
            (self.dilation[0],) * dims,
            (self.padding[0],) * 2 * dims,
            self.padding_mode,
        )

    def output_size(self, input_size: Size) -> Size:
        """Grid size of the convolution output for an input of ``input_size``."""
        axes = len(input_size)
        pads = [self.padding[2 * (axes - 1 - i)] + self.padding[2 * (axes - 1 - i) + 1] for i in range(axes)]
        return tuple(
            (input_size[i] + pads[i] - self.dilation[i] * (self.kernel_size[i] - 1) - 1) // self.stride[i] + 1 for i in range(axes)
        )

    def pad(self, stat: Tensor) -> Tensor:
        if not any(self.padding):
            return stat
        if self.padding_mode == "zeros":
            return F.pad(stat, self.padding, mode="constant", value=0.0)
        return F.pad(stat, self.padding, mode=self.padding_mode)

    def box_sum(self, stat: Tensor) -> Tensor:
        """``Σ_{v ∈ patch(u)} stat_v`` for each channel of ``stat`` (N, G, H, W) or (N, G, T, H, W)."""
        if self.is_identity:
            return stat
        groups = stat.shape[1]
        ones = stat.new_ones(groups, 1, *self.kernel_size)
        conv = F.conv2d if self.dims == 2 else F.conv3d
        return conv(self.pad(stat), ones, stride=self.stride, dilation=self.dilation, groups=groups)

    def patch_max(self, stat: Tensor) -> Tensor:
        """``max_{v ∈ patch(u)} stat_v`` (padding values included, as the layer sees them)."""
        if self.is_identity:
            return stat
        pool = F.max_pool2d if self.dims == 2 else F.max_pool3d
        return pool(self.pad(stat), self.kernel_size, stride=self.stride, dilation=self.dilation)

    def pool(self, stats: Stats, aggregate: str) -> Stats:
        """Turn per-location channel statistics into per-patch statistics."""
        if aggregate == "max":
            stat_max, stat_min = stats
            return self.patch_max(stat_max), -self.patch_max(-stat_min)
        if aggregate in NORMS:  # the last entry is the per-sample exponent, not a statistic
            return (*(self.box_sum(stat) for stat in stats[:-1]), stats[-1])
        return tuple(self.box_sum(stat) for stat in stats)


CONV3X3 = Window(kernel_size=(3, 3), padding=(1, 1, 1, 1))


def conv_window(conv: nn.Conv2d | nn.Conv3d, input_size: Size, output_size: Size) -> Window:
    """The window of a real ``Conv2d`` or ``Conv3d``, padding included (``"same"`` and modes too).

    Subclasses that pad inside ``forward`` (timm's ``Conv2dSame``) are
    recognised from the observed sizes: TensorFlow's ``SAME`` rule.
    """
    dims = len(input_size)
    kernel, stride, dilation = _tuple(conv.kernel_size, dims), _tuple(conv.stride, dims), _tuple(conv.dilation, dims)
    if conv.padding == "same" or conv.padding_mode != "zeros":
        padding = tuple(conv._reversed_padding_repeated_twice)  # noqa: SLF001
    elif isinstance(conv.padding, str):  # "valid"
        padding = (0,) * (2 * dims)
    else:
        padding = tuple(p for side in reversed(_tuple(conv.padding, dims)) for p in (side, side))
    window = Window(kernel, stride, dilation, padding, conv.padding_mode)
    if window.output_size(input_size) == tuple(output_size):
        return window
    same = _tf_same_padding(input_size, kernel, stride, dilation)
    window = Window(kernel, stride, dilation, same, "zeros")
    if window.output_size(input_size) == tuple(output_size):
        return window
    raise NormGradError(
        f"cannot tell how {type(conv).__name__} pads its input: input {tuple(input_size)} gives "
        f"output {tuple(output_size)}, which neither its padding={conv.padding} nor TensorFlow 'SAME' "
        "padding explains; use a virtual extract (conv1x1, conv3x3, ...) for this layer"
    )


def _tf_same_padding(input_size: Size, kernel: Size, stride: Size, dilation: Size) -> Size:
    pads = []
    for i in range(len(input_size)):
        total = max((math.ceil(input_size[i] / stride[i]) - 1) * stride[i] + (kernel[i] - 1) * dilation[i] + 1 - input_size[i], 0)
        pads.append((total // 2, total - total // 2))
    return tuple(p for pair in reversed(pads) for p in pair)  # F.pad order: last axis first


def _tuple(value: int | tuple[int, ...], dims: int) -> Size:
    if isinstance(value, int):
        return (value,) * dims
    return tuple(int(v) for v in value[:dims])


__all__ = ["CONV3X3", "Window", "conv_window"]
