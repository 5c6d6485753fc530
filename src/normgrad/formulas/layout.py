"""Tensor layouts the engine understands, brought to (N, C, h, w).

Activations (module outputs, the input image):

* (N, C, H, W) — convolutional feature maps;
* (N, T, C)    — tokens, channels last (transformers), laid on their grid
  (N, C, s, s) when ``T = s²``; with ``T = k + s²`` for ``1 ≤ k ≤ 8`` the
  first ``k`` tokens (class and register tokens, first as in timm's ViTs)
  have no position and are left out of the map; otherwise a strip (N, C, 1, T);
* (N, C)       — vectors; the map is (N, 1, 1, 1).

Inputs and outputs of ``nn.Linear`` are channels last: (N, C), (N, T, C) or
(N, H, W, C).
"""

from __future__ import annotations

import math

from torch import Tensor

from normgrad.errors import NormGradError

SUPPORTED_ACTIVATIONS = "a tensor of shape (N, C, H, W), (N, T, C) tokens or (N, C)"


def activation_to_nchw(tensor: Tensor, where: str) -> Tensor:
    """View an activation as (N, C, h, w), channels first."""
    if tensor.dim() == 4:
        return tensor
    if tensor.dim() == 3:
        return tokens_to_nchw(tensor)
    if tensor.dim() == 2:
        return tensor[:, :, None, None]
    raise NormGradError(f"{where}: activation of shape {tuple(tensor.shape)} is not supported; expected {SUPPORTED_ACTIVATIONS}")


def channels_last_to_nchw(tensor: Tensor, where: str) -> Tensor:
    """View a channels-last tensor (Linear input/output) as (N, C, h, w)."""
    if tensor.dim() == 2:
        return tensor[:, :, None, None]
    if tensor.dim() == 3:
        return tokens_to_nchw(tensor)
    if tensor.dim() == 4:
        return tensor.permute(0, 3, 1, 2)
    raise NormGradError(
        f"{where}: Linear input of shape {tuple(tensor.shape)} is not supported; expected (N, C), (N, T, C) or (N, H, W, C)"
    )


def tokens_to_nchw(tokens: Tensor) -> Tensor:
    """(N, T, C) → (N, C, s, s) for T = s² or T = k + s² (the k ≤ 8 prefix tokens dropped), else (N, C, 1, T)."""
    n, count, channels = tokens.shape
    for prefix in range(0, 9):
        side = math.isqrt(count - prefix) if count > prefix else 0
        if side > 1 and side * side == count - prefix:
            return tokens[:, prefix:].transpose(1, 2).reshape(n, channels, side, side)
    return tokens.transpose(1, 2).reshape(n, channels, 1, count)
