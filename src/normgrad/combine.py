"""Combining the maps of several layers into one fine-grained map.

Each map is upsampled bilinearly to the image size, min-max normalised per
sample to [0, 1], then combined with weights ``w_l`` normalised to sum to 1:

* ``product``   — ``Π_l S_l`` (the CVPR paper's figures; weights unused);
* ``geometric`` — ``Π_l S_l^{w_l}``;
* ``sum``       — ``Σ_l w_l S_l``.

Deep layers are class-selective but coarse, shallow ones sharp but less
selective; the product keeps what all layers agree on.

Maps of videos and volumes, (N, 1, t, h, w), are upsampled trilinearly to
``size`` = (T, H, W) and normalised over the whole clip (frames compare).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from normgrad.errors import NormGradError

COMBINE_MODES: tuple[str, ...] = ("product", "geometric", "sum")


def upsample(saliency_map: Tensor, size: tuple[int, ...]) -> Tensor:
    """Bilinear resize of an (N, 1, h, w) map to ``size`` = (H, W); trilinear for an (N, 1, t, h, w) map to (T, H, W)."""
    _check_map(saliency_map)
    size = tuple(int(side) for side in size)
    if len(size) != saliency_map.dim() - 2:
        what = "(T, H, W)" if saliency_map.dim() == 5 else "(H, W)"
        raise NormGradError(f"a map of shape {tuple(saliency_map.shape)} is upsampled to a size {what}; got {size}")
    if tuple(saliency_map.shape[2:]) == size:
        return saliency_map
    mode = "bilinear" if saliency_map.dim() == 4 else "trilinear"
    return F.interpolate(saliency_map, size=size, mode=mode, align_corners=False)


def normalize(saliency_map: Tensor, eps: float = 1e-12) -> Tensor:
    """Min-max normalise each sample of an (N, 1, h, w) or (N, 1, t, h, w) map to [0, 1]; a constant map becomes 0."""
    _check_map(saliency_map)
    flat = saliency_map.flatten(1)
    shape = (-1,) + (1,) * (saliency_map.dim() - 1)
    low = flat.amin(1).view(shape)
    high = flat.amax(1).view(shape)
    return (saliency_map - low) / (high - low).clamp_min(eps)


def combine(
    maps: Mapping[str, Tensor] | Sequence[Tensor],
    size: tuple[int, ...],
    mode: str = "product",
    weights: Sequence[float] | Mapping[str, float] | None = None,
) -> Tensor:
    """Upsample, normalise and combine per-layer maps into one (N, 1, H, W) (or (N, 1, T, H, W)) map in [0, 1]."""
    if mode not in COMBINE_MODES:
        raise NormGradError(f"unknown combine mode {mode!r}; valid modes: {', '.join(COMBINE_MODES)}")
    names = list(maps) if isinstance(maps, Mapping) else list(range(len(maps)))
    tensors = list(maps.values()) if isinstance(maps, Mapping) else list(maps)
    if not tensors:
        raise NormGradError("combine needs at least one map")
    if len({t.shape[0] for t in tensors}) != 1:
        raise NormGradError(f"maps have different batch sizes: {[t.shape[0] for t in tensors]}")
    normalized = [normalize(upsample(t.float(), size)) for t in tensors]
    w = _weights(weights, names, tensors[0])
    if mode == "product":
        return torch.stack(normalized).prod(0)
    if mode == "geometric":
        return torch.stack([m.pow(wi) for m, wi in zip(normalized, w)]).prod(0)
    return torch.stack([m * wi for m, wi in zip(normalized, w)]).sum(0)


def _weights(weights, names: list, like: Tensor) -> list[float]:
    if weights is None:
        raw = [1.0] * len(names)
    elif isinstance(weights, Mapping):
        missing = [n for n in names if n not in weights]
        if missing:
            raise NormGradError(f"weights lack the layers {missing}; give one weight per map")
        raw = [float(weights[n]) for n in names]
    else:
        raw = [float(x) for x in weights]
    if len(raw) != len(names):
        raise NormGradError(f"got {len(raw)} weights for {len(names)} maps; give one weight per map")
    if any(x < 0 for x in raw) or sum(raw) <= 0:
        raise NormGradError(f"weights must be non-negative with a positive sum; got {raw}")
    total = sum(raw)
    return [x / total for x in raw]


def _check_map(saliency_map: Tensor) -> None:
    if not isinstance(saliency_map, Tensor) or saliency_map.dim() not in (4, 5) or saliency_map.shape[1] != 1:
        shape = tuple(saliency_map.shape) if isinstance(saliency_map, Tensor) else type(saliency_map).__name__
        raise NormGradError(f"saliency maps must have shape (N, 1, h, w), or (N, 1, t, h, w) for videos and volumes; got {shape}")
