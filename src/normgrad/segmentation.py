"""Segmentation: explaining a class inside a region of the image.

A segmenter outputs dense class scores ``s_k(p)`` for every position ``p``:
a tensor ``(N, K, h, w)``, torchvision's ``{"out": (N, K, H, W), "aux": ...}``
(FCN, DeepLabV3, LR-ASPP) or a Hugging Face ``SemanticSegmenterOutput``
whose ``logits`` are at a fraction of the input's resolution (SegFormer:
1/4).  The region target's objective is the class's score summed over a
region ``R`` of the *input*:

    J = Σ_{p ∈ R} w(p) · ŝ_c(p),      ŝ_c = bilinear upsampling of s_c to the input's H × W

``w`` is a mask (0/1, or soft weights in [0, 1]), the indicator of a box
``x0 ≤ x < x1, y0 ≤ y < y1`` (input pixels, end exclusive), or — with
neither — the class's predicted region ``{p : argmax_k ŝ_k(p) = c}``
(taken once, without gradient).  Upsampling first is how the models' own
post-processing reads a low-resolution output (torchvision's segmenters
and Hugging Face's ``post_process_semantic_segmentation`` both interpolate
bilinearly, ``align_corners=False``), and it is linear: ``J`` is
``Σ_q (Uᵀw)(q) · s_c(q)`` on the output's own grid, each low-resolution
logit weighted by how much of it the region covers.  At the input's
resolution (torchvision) ``U`` is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from normgrad.errors import NormGradError
from normgrad.outputs import describe, logits_of

Box = tuple[int, int, int, int]


@dataclass(frozen=True, eq=False)
class Region:
    """The objective ``J = Σ_{p∈R} w(p) ŝ_c(p)``: class ``cls``'s scores summed over a mask, a box or the predicted region.

    ``mask``: (H, W) for every sample or (N, H, W), at the input's
    resolution (bool, or float weights in [0, 1]).  ``box``: ``(x0, y0, x1,
    y1)`` in input pixels, end exclusive.  Neither: the pixels where the
    model predicts ``cls``; a sample where it predicts ``cls`` nowhere is an
    error (its objective would be zero and its map blank).
    """

    cls: int
    mask: Any = None
    box: Box | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cls, bool) or not isinstance(self.cls, (int, np.integer)) or self.cls < 0:
            raise NormGradError(f"a Region's class must be a non-negative int; got {self.cls!r}")
        if self.mask is not None and self.box is not None:
            raise NormGradError("a Region takes a mask or a box, not both")
        if self.box is not None:
            box = tuple(self.box)
            if len(box) != 4 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box):
                raise NormGradError(f"a Region's box must be four ints (x0, y0, x1, y1); got {self.box!r}")
            x0, y0, x1, y1 = box
            if not (0 <= x0 < x1 and 0 <= y0 < y1):
                raise NormGradError(f"a Region's box (x0, y0, x1, y1) needs 0 ≤ x0 < x1 and 0 ≤ y0 < y1; got {box}")
        if self.mask is not None:
            mask = torch.as_tensor(np.asarray(self.mask) if not isinstance(self.mask, Tensor) else self.mask)
            if mask.dim() not in (2, 3) or mask.is_complex():
                raise NormGradError(f"a Region's mask must be (H, W) or (N, H, W); got shape {tuple(mask.shape)}")
            mask = mask.float()
            if not bool(((mask >= 0) & (mask <= 1)).all()):
                raise NormGradError("a Region's mask must hold values in [0, 1] (a boolean mask or soft weights)")
            object.__setattr__(self, "mask", mask)

    def weights(self, output: Any, image_size: tuple[int, int]) -> Tensor:
        """``w`` (N, H, W) on the input's grid (no gradient): the mask, the box, or the predicted region."""
        logits = dense_logits(output)
        batch = logits.shape[0]
        height, width = image_size
        if self.cls >= logits.shape[1]:
            raise NormGradError(
                f"region class {self.cls} is out of range: the model has {logits.shape[1]} classes (0..{logits.shape[1] - 1})"
            )
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if x1 > width or y1 > height:
                raise NormGradError(f"the region's box {tuple(self.box)} reaches outside the {width}×{height} (W×H) input")
            weights = torch.zeros(batch, height, width, device=logits.device)
            weights[:, y0:y1, x0:x1] = 1
            return weights
        if self.mask is not None:
            mask = self.mask.to(logits.device)
            if tuple(mask.shape[-2:]) != (height, width) or (mask.dim() == 3 and mask.shape[0] != batch):
                raise NormGradError(
                    f"the region's mask has shape {tuple(mask.shape)}; the input needs (H, W) = {(height, width)} or (N, H, W)"
                )
            weights = mask.expand(batch, height, width)
        else:
            weights = (predicted_classes(logits, image_size) == self.cls).float()
        empty = [i for i in range(batch) if not bool(weights[i].any())]
        if empty:
            where = "the mask is empty" if self.mask is not None else f"the model predicts class {self.cls} at no pixel"
            raise NormGradError(
                f"region target of sample {empty[0]}: {where}, so the objective is 0 and its map blank; give a mask or box (--region)"
            )
        return weights

    def scores(self, output: Any, image_size: tuple[int, int]) -> Tensor:
        """``J`` per sample, (N,)."""
        logits = dense_logits(output)
        weights = self.weights(output, image_size)
        plane = to_image_grid(logits[:, self.cls : self.cls + 1], image_size)[:, 0]
        return (plane * weights.to(plane.dtype)).sum((1, 2))

    def sample(self, index: int) -> Region:
        """The region of sample ``index`` alone (a per-sample mask sliced)."""
        if isinstance(self.mask, Tensor) and self.mask.dim() == 3:
            return Region(self.cls, self.mask[index : index + 1])
        return self


def dense_logits(output: Any) -> Tensor:
    """The dense scores (N, K, h, w) of a segmenter's output (a tensor, torchvision's dict, a Hugging Face ModelOutput)."""
    logits = logits_of(output)
    if logits is None or logits.dim() != 4:
        raise NormGradError(
            f"a region target needs dense class scores (N, K, h, w) from the model; got an output {describe(output)} "
            "(a classifier: explain a class, target=int, without --task segment)"
        )
    return logits


def to_image_grid(scores: Tensor, image_size: tuple[int, int]) -> Tensor:
    """(N, K, h, w) scores at the input's (H, W): bilinear, ``align_corners=False`` (as the models' own post-processing)."""
    if tuple(scores.shape[-2:]) == tuple(image_size):
        return scores
    return F.interpolate(scores, size=tuple(image_size), mode="bilinear", align_corners=False)


def predicted_classes(output: Any, image_size: tuple[int, int]) -> Tensor:
    """The predicted class of every input pixel, (N, H, W) int64 (one sample at a time: K × H × W floats at most)."""
    logits = dense_logits(output)
    with torch.no_grad():
        return torch.cat([to_image_grid(logits[i : i + 1].detach().float(), image_size).argmax(1) for i in range(logits.shape[0])])


def is_segmenter_output(output: Any) -> bool:
    """Whether a model output holds dense class scores (N, K, h, w)."""
    logits = logits_of(output)
    return logits is not None and logits.dim() == 4


__all__ = ["Box", "Region", "dense_logits", "is_segmenter_output", "predicted_classes", "to_image_grid"]
