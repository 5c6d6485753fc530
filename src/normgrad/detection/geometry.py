"""Where a detector's own input lies on the photo, and maps carried back to the photo's pixel grid.

torchvision's detectors normalise, resize and pad their input inside the
model (``GeneralizedRCNNTransform``, also used by RetinaNet, FCOS and SSD):
a photo of ``H × W`` pixels is resized to ``H_r × W_r`` (bilinear, the
scale ``H_r/H`` along rows and ``W_r/W`` along columns) and zero-padded at
the bottom and right to ``H_p × W_p`` (a multiple of ``size_divisible``).
Maps are taken on that padded tensor, the model's own input, so a map of
``h × w`` cells covers the ``H_p × W_p`` padded image: cell ``j`` spans the
padded pixels ``[j·s, (j+1)·s)`` with ``s = W_p / w`` (and rows likewise).

**Back to the photo, exactly.**  A photo pixel ``x`` (centre ``x + ½``)
lies at ``(x + ½)·W_r/W`` in the resized image (the resize's own
geometry, ``align_corners=False``), which is at cell coordinate

    m(x) = (x + ½)·(W_r / W) / s − ½

on the map, where cell ``j``'s centre is at ``m = j``.  The photo-grid map
is the bilinear sample of the map at ``m(x)`` (clamped to the first and
last cell, as ``F.interpolate`` does).  Only cells over the resized image
and their direct neighbours are ever read, so the padding is cropped away;
and a map is resampled once — not upsampled to the padded size, cropped and
resized again, which would blur it twice.  When the photo is not resized
(``W_r = W``) this is exactly "upsample to ``H_p × W_p`` then crop to
``H × W``".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from normgrad.errors import NormGradError


@dataclass(frozen=True)
class Resized:
    """A batch of photos as the detector sees it: the padded, normalised tensor and each photo's two sizes.

    ``tensors`` (N, 3, H_p, W_p); ``image_sizes[i]`` the resized ``(H_r, W_r)``
    (top-left aligned, the rest padding); ``photo_sizes[i]`` the photo's ``(H, W)``.
    """

    tensors: Tensor
    image_sizes: list[tuple[int, int]]
    photo_sizes: list[tuple[int, int]]

    @property
    def padded_size(self) -> tuple[int, int]:
        return int(self.tensors.shape[-2]), int(self.tensors.shape[-1])

    def to_photo(self, saliency_map: Tensor) -> Tensor:
        """An (N, 1, h, w) map on the padded grid at each photo's pixel grid (N, 1, H, W); every photo must have one size."""
        if len(set(self.photo_sizes)) != 1 or len(set(self.image_sizes)) != 1:
            raise NormGradError("maps of photos of different sizes have no common grid: map them one photo at a time (Resized.select(i))")
        return map_to_photo(saliency_map, self.image_sizes[0], self.padded_size, self.photo_sizes[0])

    def select(self, index: int) -> Resized:
        """The geometry of photo ``index`` alone."""
        return Resized(self.tensors[index : index + 1], [self.image_sizes[index]], [self.photo_sizes[index]])


def cell_coordinates(photo: int, resized: int, padded: int, cells: int) -> Tensor:
    """``m(x)`` for the ``photo`` pixels of one axis: where each pixel centre lies on a map of ``cells`` cells (float64)."""
    x = torch.arange(photo, dtype=torch.float64)
    stride = padded / cells
    return (x + 0.5) * (resized / photo) / stride - 0.5


def map_to_photo(saliency_map: Tensor, resized: tuple[int, int], padded: tuple[int, int], photo: tuple[int, int]) -> Tensor:
    """An (N, 1, h, w) map over the ``padded`` image, sampled at the pixel centres of the ``photo`` (bilinear; see the module doc)."""
    if not isinstance(saliency_map, Tensor) or saliency_map.dim() != 4 or saliency_map.shape[1] != 1:
        shape = tuple(saliency_map.shape) if isinstance(saliency_map, Tensor) else type(saliency_map).__name__
        raise NormGradError(f"saliency maps must have shape (N, 1, h, w); got {shape}")
    for what, (rows, cols) in (("resized", resized), ("padded", padded), ("photo", photo)):
        if rows < 1 or cols < 1:
            raise NormGradError(f"the {what} size must be positive; got {(rows, cols)}")
    if resized[0] > padded[0] or resized[1] > padded[1]:
        raise NormGradError(f"the resized image {resized} must fit inside the padded one {padded}")
    height, width = saliency_map.shape[-2:]
    rows = cell_coordinates(photo[0], resized[0], padded[0], height).clamp(0, height - 1)
    cols = cell_coordinates(photo[1], resized[1], padded[1], width).clamp(0, width - 1)
    source = saliency_map.float()
    by_rows = _lerp(source, rows, dim=2)
    return _lerp(by_rows, cols, dim=3)


def _lerp(values: Tensor, coordinates: Tensor, dim: int) -> Tensor:
    """Linear interpolation of ``values`` along ``dim`` at (clamped) fractional indices ``coordinates``."""
    low = coordinates.floor().long()
    high = (low + 1).clamp(max=values.shape[dim] - 1)
    weight = (coordinates - low).to(values.dtype).to(values.device)
    shape = [1] * values.dim()
    shape[dim] = -1
    below = values.index_select(dim, low.to(values.device))
    above = values.index_select(dim, high.to(values.device))
    return below + (above - below) * weight.view(shape)


__all__ = ["Resized", "cell_coordinates", "map_to_photo"]
