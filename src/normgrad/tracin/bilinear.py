"""The closed forms: per-example weight gradients and their per-location split, never an outer product per location.

A layer's weight gradient for one example is a sum over its locations ``u``
of one rank-1 term (NormGrad's decomposition), so a dot product with any
weight-shaped matrix ``G′`` (a test example's gradient) splits exactly over
the locations:

=============  ==============================  ==========================  =====================================
kind           per-example gradient ``G``      term at ``u`` for ``G′``    computed as
=============  ==============================  ==========================  =====================================
``pointwise``  ``Σ_u p_u q_uᵀ``  (O×I)         ``p_uᵀ G′ q_u``             ``q @ G′ᵀ`` (a 1×1 convolution), then
                                                                           a channel dot with ``p``
``diagonal``   ``Σ_u p_u ⊙ q_u`` (C)           ``Σ_c p_uc q_uc G′_c``      ``(p ⊙ q) @ G′``
``conv``       ``Σ_u p_u ⊗ P_u(x)`` per group  ``p_uᵀ G′ P_u(x)``          ``conv2d(x, G′ as a kernel)``, then a
                                                                           channel dot with ``p``
bias           ``Σ_u p_u``                     ``p_uᵀ b′``                 ``p @ b′``
=============  ==============================  ==========================  =====================================

``p`` is the gradient of the loss at the layer's output, ``q`` the vector
the weight multiplies at ``u``: the activation itself for the virtual
identity (``conv1x1``) and the virtual per-channel gain (``scaling``), the
layer input for a ``Linear`` with its own weights.  For a ``Conv2d`` the
patches ``P_u(x)`` are never unfolded: the convolution of the layer input
with ``G′`` (reshaped as a kernel, one per test example, stacked along the
output channels) evaluates every ``G′ P_u(x)`` at once.

``pointwise`` and ``diagonal`` tensors are in *positions* form ``(N, P, C)``
(every position of the activation, prefix tokens included); ``conv`` ones
are ``(N, C, H, W)``.  Terms come back as ``(N, T, P)`` or ``(N, T, h, w)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from normgrad.formulas.patches import Window

CHUNK_ELEMENTS = 1 << 25  # the largest intermediate (N × tests × channels × positions) computed at once: 128 MiB in float32

Gradient = dict[str, Tensor]  # "weight" (and "bias" when the layer has one), each with a leading example dimension


@dataclass
class LayerPass:
    """What one forward/backward leaves of a layer: ``p`` and ``q`` (or the conv input ``x``), and how to read them."""

    kind: str  # "pointwise", "diagonal" or "conv"
    p: Tensor
    q: Tensor
    bias: bool = False
    window: Window | None = None  # conv: the layer's window (``q`` is the unpadded input)
    groups: int = 1

    def gradient(self) -> Gradient:
        """The per-example weight (and bias) gradient ``G`` of the loss: one closed form, no loop over examples."""
        if self.kind == "pointwise":
            gradient = {"weight": torch.bmm(self.p.transpose(1, 2), self.q)}
        elif self.kind == "diagonal":
            gradient = {"weight": (self.p * self.q).sum(1)}
        else:
            gradient = {"weight": _conv_weight_per_example(self.q, self.p, self.window, self.groups)}
        if self.bias:
            gradient["bias"] = self.p.sum(1) if self.kind != "conv" else self.p.sum((2, 3))
        return gradient

    def terms(self, other: Gradient) -> Tensor:
        """``t[n, j, u]``: the term of location ``u`` of example ``n`` in ``⟨G_n, G′_j⟩`` for each ``G′_j`` in ``other``.

        ``(N, T, P)`` in positions form, ``(N, T, h, w)`` for a convolution.  Summed over ``u`` it is the dot product.
        """
        tests = other["weight"].shape[0]
        step = max(1, CHUNK_ELEMENTS // max(self.p.numel(), 1))  # the intermediate holds about p.numel() values per test
        chunks = []
        for start in range(0, tests, step):
            part = {key: value[start : start + step] for key, value in other.items()}
            chunks.append(self._terms(part))
        return torch.cat(chunks, dim=1)

    def _terms(self, other: Gradient) -> Tensor:
        weight = other["weight"].to(self.p.dtype)
        tests = weight.shape[0]
        if self.kind == "pointwise":  # q @ G′ᵀ: (N, P, T·O), then the dot with p over O
            out_channels = weight.shape[1]
            moved = (self.q @ weight.reshape(tests * out_channels, -1).T).unflatten(-1, (tests, out_channels))
            terms = (moved * self.p[:, :, None, :]).sum(-1).transpose(1, 2)
        elif self.kind == "diagonal":
            terms = ((self.p * self.q) @ weight.T).transpose(1, 2)
        else:
            terms = _conv_terms(self.q, self.p, weight, self.window, self.groups)
        if self.bias and "bias" in other:
            bias = other["bias"].to(self.p.dtype)
            if self.kind == "conv":
                terms = terms + torch.einsum("nohw,to->nthw", self.p, bias)
            else:
                terms = terms + (self.p @ bias.T).transpose(1, 2)
        return terms

    def self_terms(self, own: Gradient) -> Tensor:
        """``t[n, 0, u]``: the term of location ``u`` in ``⟨G_n, G_n⟩`` (self-influence), ``(N, 1, P)`` or ``(N, 1, h, w)``."""
        weight = own["weight"].to(self.p.dtype)
        if self.kind == "pointwise":
            terms = (torch.bmm(self.q, weight.transpose(1, 2)) * self.p).sum(-1)[:, None]
        elif self.kind == "diagonal":
            terms = ((self.p * self.q) * weight[:, None, :]).sum(-1)[:, None]
        else:
            terms = _conv_self_terms(self.q, self.p, weight, self.window, self.groups)
        if self.bias:
            bias = own["bias"].to(self.p.dtype)
            if self.kind == "conv":
                terms = terms + (self.p * bias[:, :, None, None]).sum(1, keepdim=True)
            else:
                terms = terms + (self.p * bias[:, None, :]).sum(-1)[:, None]
        return terms


def _conv_weight_per_example(x: Tensor, grad: Tensor, window: Window, groups: int) -> Tensor:
    """``Σ_u g_u ⊗ P_u(x)`` for each example: one grouped weight-gradient convolution over the whole batch.

    The batch is folded into the channels (``N·C`` channels, ``N·groups`` groups), so example ``n``'s
    gradient is the kernel gradient of its own group; this is what the layer's backward computes, per example.
    """
    batch, in_channels = x.shape[:2]
    out_channels = grad.shape[1]
    padded = window.pad(x)
    padded = padded.reshape(1, batch * in_channels, *padded.shape[-2:])
    kernel_size = (batch * out_channels, in_channels // groups, *window.kernel_size)
    weight = torch.nn.grad.conv2d_weight(
        padded, kernel_size, grad.reshape(1, batch * out_channels, *grad.shape[-2:]), window.stride, 0, window.dilation, batch * groups
    )
    return weight.reshape(batch, out_channels, in_channels // groups, *window.kernel_size)


def _conv_terms(x: Tensor, grad: Tensor, weight: Tensor, window: Window, groups: int) -> Tensor:
    """``p_uᵀ G′_j P_u(x)`` for every test ``j``: ``x`` convolved with the stacked ``G′_j``, then a channel dot with ``p``.

    With groups, the stacked kernel is ordered (group, test, channel of the group), the order grouped
    convolutions split their output channels in.
    """
    tests, out_channels = weight.shape[:2]
    per_group = out_channels // groups
    kernel = weight.reshape(tests, groups, per_group, *weight.shape[2:]).transpose(0, 1)
    kernel = kernel.reshape(groups * tests * per_group, *weight.shape[2:])
    moved = F.conv2d(window.pad(x), kernel, stride=window.stride, dilation=window.dilation, groups=groups)
    batch, _, height, width = moved.shape
    moved = moved.reshape(batch, groups, tests, per_group, height, width)
    return (moved * grad.reshape(batch, groups, 1, per_group, height, width)).sum((1, 3))


def _conv_self_terms(x: Tensor, grad: Tensor, weight: Tensor, window: Window, groups: int) -> Tensor:
    """``p_uᵀ G_n P_u(x_n)``: each example convolved with its own gradient (the batch folded into the groups)."""
    batch, in_channels = x.shape[:2]
    out_channels = grad.shape[1]
    padded = window.pad(x)
    moved = F.conv2d(
        padded.reshape(1, batch * in_channels, *padded.shape[-2:]),
        weight.reshape(batch * out_channels, *weight.shape[2:]),
        stride=window.stride,
        dilation=window.dilation,
        groups=batch * groups,
    )
    return (moved.reshape(batch, out_channels, *moved.shape[-2:]) * grad).sum(1, keepdim=True)


def flatten(gradient: Gradient) -> Tensor:
    """``G`` as one row per example (weight then bias), for dot products."""
    return torch.cat([gradient[key].flatten(1) for key in ("weight", "bias") if key in gradient], dim=1)


__all__ = ["CHUNK_ELEMENTS", "Gradient", "LayerPass", "flatten"]
