"""Targets on a detector's output: Captum-style callables ``output -> (N,)`` over its list of dicts.

A torchvision detector returns, per image, ``{"boxes": (K, 4) x0 y0 x1 y1
in photo pixels, "labels": (K,), "scores": (K,)}``.  Each target picks
detections *in the output of the pass being back-propagated* and returns
one differentiable score per image:

* :class:`DetectionScore` — one detection, matched by class and box: among
  the detections of class ``label``, the one whose box has the largest IoU
  with ``box`` (at least ``min_iou``).  Matching on the pass's own output,
  not on an index from an earlier run, keeps it the same detection through
  the backward pass;
* :class:`ClassDetections` — every detection of a class: ``J = Σ scores``;
* :class:`AllDetections` — every detection scoring at least ``min_score``:
  ``J = Σ scores``.

When nothing matches in an image, the target raises one
:class:`~normgrad.errors.NormGradError` naming the image and the closest
detection — never a zero objective, whose map would be silently blank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor

from normgrad.errors import NormGradError

Boxes = Union[Sequence[float], Sequence[Sequence[float]], Tensor]
Labels = Union[int, Sequence[int], Tensor]


def detections_of(output: Any) -> list[dict[str, Tensor]]:
    """The detector's output checked: a list of dicts with ``boxes`` (K, 4), ``labels`` (K,) and ``scores`` (K,)."""
    if not isinstance(output, (list, tuple)) or not all(isinstance(item, dict) for item in output):
        raise NormGradError(
            f"detection targets need a detector's output, a list of dicts with boxes, labels and scores; got a {type(output).__name__}"
        )
    for index, item in enumerate(output):
        missing = [key for key in ("boxes", "labels", "scores") if key not in item]
        if missing:
            raise NormGradError(
                f"detection {index} of the output lacks {', '.join(missing)}; a detector's output has boxes, labels and scores"
            )
    return list(output)


def box_iou(boxes: Tensor, box: Tensor) -> Tensor:
    """IoU of each of ``boxes`` (K, 4) with one ``box`` (4,), boxes as x0, y0, x1, y1; two equal empty boxes (a detection
    clipped to the photo's edge) have IoU 1."""
    width = (torch.minimum(boxes[:, 2], box[2]) - torch.maximum(boxes[:, 0], box[0])).clamp_min(0)
    height = (torch.minimum(boxes[:, 3], box[3]) - torch.maximum(boxes[:, 1], box[1])).clamp_min(0)
    inter = width * height
    area = (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)
    union = area + (box[2] - box[0]).clamp_min(0) * (box[3] - box[1]).clamp_min(0) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), (boxes == box).all(1).to(inter.dtype))


def _per_image_labels(labels: Labels, batch: int, what: str) -> list[int]:
    values = torch.as_tensor(labels)
    if values.is_floating_point() or values.dim() > 1 or isinstance(labels, bool):
        raise NormGradError(f"{what} must be an int class or one int per image; got {labels!r}")
    values = values.long().expand(batch) if values.dim() == 0 else values.long()
    if values.shape != (batch,):
        raise NormGradError(f"{what} gives {values.numel()} classes for {batch} images; give one class or one per image")
    return [int(v) for v in values]


def _per_image_boxes(boxes: Boxes, batch: int) -> Tensor:
    values = torch.as_tensor(boxes, dtype=torch.float64)
    values = values.expand(batch, 4) if values.shape == (4,) else values
    if values.shape != (batch, 4):
        raise NormGradError(f"box must be (x0, y0, x1, y1) or one such box per image, ({batch}, 4); got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()) or bool((values[:, 2] < values[:, 0]).any() | (values[:, 3] < values[:, 1]).any()):
        raise NormGradError(f"boxes must be finite with x1 ≥ x0 and y1 ≥ y0 (photo pixels); got {values.tolist()}")
    return values


@dataclass(frozen=True)
class DetectionScore:
    """``J`` = the score of the detection of class ``label`` whose box best overlaps ``box`` (IoU ≥ ``min_iou``).

    ``box``: (x0, y0, x1, y1) in photo pixels, or one box per image (N, 4);
    ``label``: one class or one per image.  :meth:`matches` tells which
    detection was explained.
    """

    box: Boxes
    label: Labels
    min_iou: float = 0.5

    def __post_init__(self) -> None:
        boxes = torch.as_tensor(self.box, dtype=torch.float64)
        _per_image_boxes(boxes, 1 if boxes.dim() == 1 else len(boxes))
        if not 0.0 < float(self.min_iou) <= 1.0:
            raise NormGradError(f"min_iou must be in (0, 1]; got {self.min_iou}")

    def matches(self, output: Any) -> list[int]:
        """For each image, the index of the matched detection in its output (raises when one has none)."""
        detections = detections_of(output)
        batch = len(detections)
        boxes, labels = _per_image_boxes(self.box, batch), _per_image_labels(self.label, batch, "label")
        chosen = []
        for index, (item, box, label) in enumerate(zip(detections, boxes, labels)):
            found = item["boxes"].detach().to(torch.float64)
            overlap = box_iou(found, box.to(found.device)) if len(found) else found.new_zeros(0)
            same_class = item["labels"].to(overlap.device) == label
            candidates = torch.where(same_class, overlap, torch.full_like(overlap, -1.0))
            if len(candidates) == 0 or float(candidates.max()) < float(self.min_iou):
                raise NormGradError(_no_match(index, box, label, self.min_iou, item, overlap, same_class))
            chosen.append(int(candidates.argmax()))
        return chosen

    def __call__(self, output: Any) -> Tensor:
        detections = detections_of(output)
        return torch.stack([item["scores"][index] for item, index in zip(detections, self.matches(detections))])


def _no_match(index: int, box: Tensor, label: int, min_iou: float, item: dict, overlap: Tensor, same_class: Tensor) -> str:
    where = f"image {index}: no detection of class {label} overlaps the box {tuple(round(float(v), 1) for v in box)} with IoU ≥ {min_iou:g}"
    if bool(same_class.any()):
        best = int(torch.where(same_class, overlap, torch.full_like(overlap, -1.0)).argmax())
        closest = f"; the closest of class {label} has IoU {float(overlap[best]):.2f} (score {float(item['scores'][best].detach()):.2f})"
    elif len(overlap):
        closest = f"; the {len(overlap)} detections have classes {sorted({int(v) for v in item['labels']})}"
    else:
        closest = "; the image has no detection"
    return f"{where}{closest} (ng.detection.detect lists an image's detections)"


@dataclass(frozen=True)
class ClassDetections:
    """``J`` = the sum of the scores of every detection of class ``label`` (one class, or one per image) scoring ≥ ``min_score``."""

    label: Labels
    min_score: float = 0.0

    def __call__(self, output: Any) -> Tensor:
        detections = detections_of(output)
        labels = _per_image_labels(self.label, len(detections), "label")
        scores = []
        for index, (item, label) in enumerate(zip(detections, labels)):
            chosen = (item["labels"] == label) & (item["scores"].detach() >= self.min_score)
            if not bool(chosen.any()):
                classes = sorted({int(v) for v in item["labels"]})
                raise NormGradError(
                    f"image {index} has no detection of class {label} scoring ≥ {self.min_score:g} "
                    f"(its detections have classes {classes or 'none'}); an empty sum would give a blank map"
                )
            scores.append(item["scores"][chosen].sum())
        return torch.stack(scores)


@dataclass(frozen=True)
class AllDetections:
    """``J`` = the sum of the scores of every detection scoring ≥ ``min_score``."""

    min_score: float = 0.5

    def __call__(self, output: Any) -> Tensor:
        detections = detections_of(output)
        scores = []
        for index, item in enumerate(detections):
            chosen = item["scores"].detach() >= self.min_score
            if not bool(chosen.any()):
                best = f"; its best scores {float(item['scores'].detach().max()):.3f}" if len(item["scores"]) else "; it has no detection"
                raise NormGradError(
                    f"image {index} has no detection scoring ≥ {self.min_score:g}{best}; an empty sum would give a blank map"
                )
            scores.append(item["scores"][chosen].sum())
        return torch.stack(scores)


__all__ = ["AllDetections", "ClassDetections", "DetectionScore", "box_iou", "detections_of"]
