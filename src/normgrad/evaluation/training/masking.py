"""Keeping or removing the top-k % pixels of an image by a saliency map.

=============  ==============================================  ===================================
operation      result at pixel ``u``                           used by
=============  ==============================================  ===================================
``keep``       ``x_u`` if ``u ∈ top_k(map)`` else ``fill_u``   per-image study, KAR
``remove``     ``fill_u`` if ``u ∈ top_k(map)`` else ``x_u``   ROAR
=============  ==============================================  ===================================

``top_k`` holds ``max(1, round(k · H·W))`` pixels per image, all channels
of a pixel together.  Ties (flat maps, Grad-CAM's zeros, the centre map's
rings) are broken at random with a seeded generator, the same draw for every
method, so no method is favoured by the order of the pixels.

Fills: ``mean`` (the dataset's per-channel mean, in model space),
``blur`` (a Gaussian-blurred copy of the image, σ = shorter side / 14) and
``road`` (ROAD's noisy linear imputation of the pixels not kept from those
kept, :mod:`normgrad.evaluation.faithfulness.imputation`: the shape of the
kept region carries no class information, Rong et al. 2022).  The
imputation commutes with the per-channel normalisation, so it runs on the
model-space tensor scaled by the pixel standard deviation (noise σ = 0.01 in
pixel units), seeded per image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normgrad.errors import NormGradError

FILLS = ("mean", "blur", "road")


def tie_breaker(count: int, height: int, width: int, seed: int) -> Tensor:
    """Random keys (count, H·W) used to break ties in the ranking; seeded, shared by all methods."""
    return torch.rand(count, height * width, generator=torch.Generator().manual_seed(seed))


def top_mask(saliency_maps: Tensor, fraction: float, ties: Tensor) -> Tensor:
    """Boolean (N, 1, H, W): the ``max(1, round(fraction·H·W))`` highest pixels of each map, ties broken by ``ties``."""
    if saliency_maps.dim() != 4 or saliency_maps.shape[1] != 1:
        raise NormGradError(f"maps must have shape (N, 1, H, W); got {tuple(saliency_maps.shape)}")
    if not 0 < fraction <= 1:
        raise NormGradError(f"the fraction of pixels must lie in (0, 1]; got {fraction}")
    flat = saliency_maps.detach().flatten(1).float().cpu()
    if not torch.isfinite(flat).all():
        raise NormGradError("a saliency map contains NaN or infinite values: cannot rank its pixels")
    if ties.shape != flat.shape:
        raise NormGradError(f"tie-breaking keys must have shape {tuple(flat.shape)}; got {tuple(ties.shape)}")
    count = max(1, round(fraction * flat.shape[1]))
    shuffled = ties.argsort(1)  # a random order of the pixels ...
    ranked = flat.gather(1, shuffled).sort(dim=1, descending=True, stable=True).indices  # ... kept among equal values
    chosen = shuffled.gather(1, ranked[:, :count])
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, chosen, True)
    return mask.view(saliency_maps.shape).to(saliency_maps.device)


def overlap(mask: Tensor, other: Tensor) -> Tensor:
    """Per image, the share of ``mask``'s pixels that ``other`` also holds, ``|A ∩ B| / |A|`` (N,)."""
    return (mask & other).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)


def keep(images: Tensor, mask: Tensor, fill: Tensor) -> Tensor:
    """``images`` where ``mask`` holds, ``fill`` elsewhere (``fill`` broadcasts: (C, 1, 1) or (N, C, H, W))."""
    return torch.where(mask, images, fill.to(images))


def remove(images: Tensor, mask: Tensor, fill: Tensor) -> Tensor:
    """``fill`` where ``mask`` holds, ``images`` elsewhere."""
    return torch.where(mask, fill.to(images), images)


def blurred(images: Tensor) -> Tensor:
    """A Gaussian-blurred copy of (N, C, H, W) images, σ = min(H, W) / 14 (2 px at 28², 16 px at 224²)."""
    from torchvision.transforms.functional import gaussian_blur

    sigma = min(images.shape[-2:]) / 14
    kernel = min(max(3, int(4 * sigma) | 1), (min(images.shape[-2:]) - 1) | 1)  # odd, ≥ 3, and no wider than the image
    return gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def keep_road(images: Tensor, mask: Tensor, pixel_std: Tensor, seeds: list[list[int]]) -> Tensor:
    """``images`` where ``mask`` holds; elsewhere ROAD's noisy linear imputation from the kept pixels (see the module docstring)."""
    from normgrad.evaluation.faithfulness.imputation import impute_seeded

    std = pixel_std.to(torch.float64).view(1, -1, 1, 1)
    imputed = impute_seeded(images.detach().cpu().double() * std, ~mask.cpu(), seeds) / std
    return imputed.to(device=images.device, dtype=images.dtype)


def fill_for(kind: str, images: Tensor, channel_mean: Tensor) -> Tensor:
    """The fill of ``kind`` for ``images``: the per-channel mean (C, 1, 1), or the blurred images (``road`` depends on the
    mask: :func:`keep_road`)."""
    if kind == "mean":
        return channel_mean.to(images).view(-1, 1, 1)
    if kind == "blur":
        return blurred(images)
    if kind == "road":
        raise NormGradError("the road fill depends on the mask: use keep_road")
    raise NormGradError(f"unknown fill {kind!r}; valid: {', '.join(FILLS)}")
