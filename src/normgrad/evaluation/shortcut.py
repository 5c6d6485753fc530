"""Fashion-MNIST with a planted shortcut: a small patch that predicts the label in a known share of the images.

Ground truth for "the pixels that matter": a model trained on these images
can learn the garment or the patch, and the patch's pixels are known exactly.

Two kinds of patch, each a ``size × size`` square (default 4 × 4) drawn on
uint8 images at least ``2·size + 3`` high and ``5·size + 6`` wide (Fashion-MNIST: 28 × 28):

``position``
    a white square (255) whose *place* encodes the class: class ``c`` sits
    in row ``1`` (classes 0–4) or row ``H − 1 − size`` (classes 5–9), at
    column ``1 + (c mod 5) · step`` with ``step = (W − 2 − size) // 4``, so
    the ten places lie along the top and bottom borders, never overlap, and
    mostly cover black background (Fashion-MNIST's garments are centred).
``pattern``
    a square at one place (top-left corner, row 1, column 1) whose *pattern*
    encodes the class: pixel ``(i, j)`` of the square is white when bit
    ``i · 4 + j`` of :data:`PATTERN_CODES` ``[c]`` is set, black otherwise
    (this kind needs ``size = 4``: one bit per pixel).  The ten 16-bit codes each light 8 of 16 bits, so every class's
    patch has the same brightness and only its arrangement tells the class.

The patch mask marks the whole square (its black pixels as well: in the
``pattern`` kind they carry as much information as the white ones).

:func:`plant_shortcut` patches ``round(share · N)`` images chosen by a seeded
permutation (``torch.Generator().manual_seed(seed)``: the same images for the
same inputs, share and seed, on every machine; the caller's RNG untouched),
each with the patch of *its own label*; the other images are returned as
they are.  :func:`stamp` puts the patch of any given classes on every image:
measuring reliance (accuracy with the true class's patch, without any
patch, with another class's patch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from normgrad.errors import NormGradError, did_you_mean

KINDS = ("position", "pattern")
NUM_CLASSES = 10
PATCH_SIZE = 4
WHITE = 255
# ten 16-bit codes with 8 bits set each, pairwise at Hamming distance ≥ 8 (checked by the tests)
PATTERN_CODES = (0x00FF, 0xFF00, 0x0F0F, 0xF0F0, 0x3333, 0xCCCC, 0x5555, 0xAAAA, 0x3C3C, 0x6969)


@dataclass(frozen=True)
class ShortcutImages:
    """Images with a planted shortcut.

    ``images`` uint8 (N, H, W); ``labels`` int64 (N,), unchanged; ``mask``
    bool (N, 1, H, W), the patch's pixels (all False where there is no
    patch); ``has_patch`` bool (N,).
    """

    images: Tensor
    labels: Tensor
    mask: Tensor
    has_patch: Tensor

    def __len__(self) -> int:
        return len(self.labels)


def patch_origin(cls: int, kind: str, height: int, width: int, size: int = PATCH_SIZE) -> tuple[int, int]:
    """(row, column) of the top-left pixel of class ``cls``'s patch."""
    _check_kind(kind)
    if kind == "pattern":
        return 1, 1
    step = (width - 2 - size) // 4
    row = 1 if cls < 5 else height - 1 - size
    return row, 1 + (cls % 5) * step


def patch_pixels(cls: int, kind: str, size: int = PATCH_SIZE) -> Tensor:
    """The patch's values, uint8 (size, size): all white (``position``) or class ``cls``'s code (``pattern``)."""
    _check_kind(kind)
    if kind == "position":
        return torch.full((size, size), WHITE, dtype=torch.uint8)
    if size != PATCH_SIZE:
        raise NormGradError(f"the pattern kind draws 16-bit codes on a {PATCH_SIZE}×{PATCH_SIZE} square; got size {size}")
    bits = torch.tensor([(PATTERN_CODES[cls] >> k) & 1 for k in range(size * size)], dtype=torch.uint8)
    return (bits * WHITE).view(size, size)


def stamp(images: Tensor, classes: Tensor, kind: str = "position", size: int = PATCH_SIZE) -> tuple[Tensor, Tensor]:
    """Every image with the patch of ``classes[i]`` drawn on it: (patched uint8 images, bool mask (N, 1, H, W)).

    ``images`` is not modified (a copy is returned).
    """
    _check_images(images, classes, size)
    _check_kind(kind)
    if kind == "pattern" and size != PATCH_SIZE:
        raise NormGradError(f"the pattern kind draws 16-bit codes on a {PATCH_SIZE}×{PATCH_SIZE} square; got size {size}")
    height, width = images.shape[-2:]
    out, mask = images.clone(), torch.zeros(len(images), 1, height, width, dtype=torch.bool)
    for cls in classes.unique().tolist():
        rows = (classes == cls).nonzero().flatten()
        top, left = patch_origin(cls, kind, height, width, size)
        out[rows, top : top + size, left : left + size] = patch_pixels(cls, kind, size)
        mask[rows, :, top : top + size, left : left + size] = True
    return out, mask


def plant_shortcut(
    images: Tensor, labels: Tensor, share: float, seed: int, *, kind: str = "position", size: int = PATCH_SIZE
) -> ShortcutImages:
    """Patch ``round(share · N)`` seeded-random images with the patch of their own label (see the module docstring)."""
    if not 0 <= share <= 1:
        raise NormGradError(f"the share of patched images must lie in [0, 1]; got {share}")
    _check_images(images, labels, size)
    count = round(share * len(images))
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    has_patch = torch.zeros(len(images), dtype=torch.bool)
    has_patch[chosen] = True
    patched, patch_mask = stamp(images[has_patch], labels[has_patch], kind, size)
    out = images.clone()
    out[has_patch] = patched
    mask = torch.zeros(len(images), 1, *images.shape[-2:], dtype=torch.bool)
    mask[has_patch] = patch_mask
    return ShortcutImages(out, labels.clone(), mask, has_patch)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise NormGradError(f"unknown shortcut kind {kind!r}{did_you_mean(kind, KINDS)}; valid: {', '.join(KINDS)}")


def _check_images(images: Tensor, classes: Tensor, size: int) -> None:
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise NormGradError(f"expected uint8 images (N, H, W); got {images.dtype} {tuple(images.shape)}")
    if classes.dim() != 1 or len(classes) != len(images):
        raise NormGradError(f"expected one class per image ({len(images)}); got shape {tuple(classes.shape)}")
    if classes.numel() and (classes.min() < 0 or classes.max() >= NUM_CLASSES):
        raise NormGradError(f"classes must lie in 0..{NUM_CLASSES - 1}; got {int(classes.min())}..{int(classes.max())}")
    if not 2 <= size <= 6:
        raise NormGradError(f"the patch side must lie in 2..6 pixels; got {size}")
    height, width = images.shape[-2:]
    if height < 2 * size + 3 or width < 5 * size + 6:  # five non-overlapping places per border row
        raise NormGradError(
            f"images must be at least {2 * size + 3} high and {5 * size + 6} wide for a {size}-pixel patch; got {height}×{width}"
        )
