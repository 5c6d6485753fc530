"""Receptive-field patches, reduced without unfolding them.

A convolution's output location ``u`` sees the patch ``P_u(x)`` of its
(padded) input.  Patch-wise sums of a per-location statistic are a box
filter (a convolution with a kernel of ones, same stride and dilation),
patch-wise extremes a max pool; padding is applied to the statistic with
the layer's own padding mode, so zero padding puts zeros into border
patches exactly as the convolution sees them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from normgrad.errors import NormGradError
from normgrad.formulas.aggregate import NORMS, Stats

Pair = tuple[int, int]


@dataclass(frozen=True)
class Window:
    """A convolution window: kernel, stride, dilation, explicit padding and its mode.

    ``padding`` is ``(left, right, top, bottom)`` as for :func:`torch.nn.functional.pad`.
    """

    kernel_size: Pair = (1, 1)
    stride: Pair = (1, 1)
    dilation: Pair = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    padding_mode: str = "zeros"

    @property
    def is_identity(self) -> bool:
        return self == Window()

    def output_size(self, input_size: Pair) -> Pair:
        """Spatial size of the convolution output for an input of ``input_size``."""
        left, right, top, bottom = self.padding
        padded = (input_size[0] + top + bottom, input_size[1] + left + right)
        return tuple(  # type: ignore[return-value]
            (padded[i] - self.dilation[i] * (self.kernel_size[i] - 1) - 1) // self.stride[i] + 1 for i in range(2)
        )

    def pad(self, stat: Tensor) -> Tensor:
        if not any(self.padding):
            return stat
        if self.padding_mode == "zeros":
            return F.pad(stat, self.padding, mode="constant", value=0.0)
        return F.pad(stat, self.padding, mode=self.padding_mode)

    def box_sum(self, stat: Tensor) -> Tensor:
        """``Σ_{v ∈ patch(u)} stat_v`` for each channel of ``stat`` (N, G, H, W)."""
        if self.is_identity:
            return stat
        groups = stat.shape[1]
        ones = stat.new_ones(groups, 1, *self.kernel_size)
        return F.conv2d(self.pad(stat), ones, stride=self.stride, dilation=self.dilation, groups=groups)

    def patch_max(self, stat: Tensor) -> Tensor:
        """``max_{v ∈ patch(u)} stat_v`` (padding values included, as the layer sees them)."""
        if self.is_identity:
            return stat
        return F.max_pool2d(self.pad(stat), self.kernel_size, stride=self.stride, dilation=self.dilation)

    def pool(self, stats: Stats, aggregate: str) -> Stats:
        """Turn per-location channel statistics into per-patch statistics."""
        if aggregate == "max":
            stat_max, stat_min = stats
            return self.patch_max(stat_max), -self.patch_max(-stat_min)
        if aggregate in NORMS:  # the last entry is the per-sample exponent, not a statistic
            return (*(self.box_sum(stat) for stat in stats[:-1]), stats[-1])
        return tuple(self.box_sum(stat) for stat in stats)


CONV3X3 = Window(kernel_size=(3, 3), padding=(1, 1, 1, 1))


def conv_window(conv: nn.Conv2d, input_size: Pair, output_size: Pair) -> Window:
    """The window of a real ``Conv2d``, padding included (``"same"`` and modes too).

    Subclasses that pad inside ``forward`` (timm's ``Conv2dSame``) are
    recognised from the observed sizes: TensorFlow's ``SAME`` rule.
    """
    kernel, stride, dilation = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.dilation)
    if conv.padding == "same" or conv.padding_mode != "zeros":
        left, right, top, bottom = conv._reversed_padding_repeated_twice  # noqa: SLF001
        padding = (left, right, top, bottom)
    elif isinstance(conv.padding, str):  # "valid"
        padding = (0, 0, 0, 0)
    else:
        ph, pw = _pair(conv.padding)
        padding = (pw, pw, ph, ph)
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


def _tf_same_padding(input_size: Pair, kernel: Pair, stride: Pair, dilation: Pair) -> tuple[int, int, int, int]:
    pads = []
    for i in range(2):
        total = max((math.ceil(input_size[i] / stride[i]) - 1) * stride[i] + (kernel[i] - 1) * dilation[i] + 1 - input_size[i], 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return (left, right, top, bottom)


def _pair(value: int | tuple[int, ...]) -> Pair:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


__all__ = ["CONV3X3", "Window", "conv_window"]
