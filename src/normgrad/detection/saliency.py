"""Saliency of a detector's detections: maps at every pyramid level in one pass, on the photo's pixel grid.

    maps = ng.detection.saliency(model, photos, DetectionScore(box, label))
    maps.levels["backbone.fpn.layer_blocks.0"]   # (N, 1, h, w) on the model's padded input
    maps.photo["backbone.fpn.layer_blocks.0"]    # (N, 1, H, W) on the photo
    maps.combined()                              # (N, 1, H, W) in [0, 1]

The engine (:func:`normgrad.saliency`) runs on the detector's own resized,
padded input (:func:`normgrad.detection.detector.on_resized`), one forward
and one backward for every level; each level's map is then carried back to
the photo exactly (:mod:`normgrad.detection.geometry`).

A single detection is scored from *one* level: a two-stage detector pools
its box from the level its size selects (``MultiScaleRoIAlign``), a
one-stage detector scores it at one anchor of one level.  The FPN's output
convolutions do not feed each other, so the other levels get no gradient
(except those that feed the one read: RetinaNet/FCOS's P6 is computed from
P5, SSD's blocks form a chain) and their maps are exactly zero;
:meth:`DetectionMaps.combined` leaves such levels out per image instead of
letting a product zero everything.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normgrad.combine import COMBINE_MODES, normalize
from normgrad.detection.detector import check_detector, check_photos, on_resized, pyramid_levels, resize
from normgrad.detection.geometry import Resized
from normgrad.engine.layers import Layers
from normgrad.engine.model_state import eval_mode
from normgrad.engine.single_pass import PerLayer, run_saliency
from normgrad.errors import NormGradError
from normgrad.targets import Target


@dataclass
class DetectionMaps:
    """The maps of one pass: per level on the model's padded input (``levels``) and on the photo (``photo``)."""

    levels: dict[str, Tensor]
    photo: dict[str, Tensor]
    resized: Resized

    def combined(self, mode: str = "sum") -> Tensor:
        """One (N, 1, H, W) map in [0, 1] from the photo-grid maps of the levels whose map is not zero (see the module doc).

        Each level is min-max normalised per image; ``sum`` averages them,
        ``product`` / ``geometric`` multiply them (equal weights); a level
        whose map is zero for an image is left out of that image's
        combination.  The result is normalised again.
        """
        if mode not in COMBINE_MODES:
            raise NormGradError(f"unknown combine mode {mode!r}; valid modes: {', '.join(COMBINE_MODES)}")
        stacked = torch.stack([normalize(m) for m in self.photo.values()])  # (L, N, 1, H, W)
        used = torch.stack([m.flatten(1).abs().amax(1) > 0 for m in self.photo.values()]).float().view(*stacked.shape[:2], 1, 1, 1)
        blank = [i for i in range(used.shape[1]) if not bool(used[:, i].any())]
        if blank:
            warnings.warn(
                f"image(s) {blank}: every selected layer's map is zero, so the combined map is blank (no gradient reaches "
                "those layers — the default selects every pyramid level — or the method zeroed them, as Grad-CAM's ReLU does)",
                stacklevel=2,
            )
        count = used.sum(0).clamp_min(1)
        if mode == "sum":
            combined = (stacked * used).sum(0) / count
        else:  # an unused level is the neutral 1
            combined = torch.where(used.bool(), stacked, torch.ones_like(stacked)).prod(0)
            combined = combined.pow(1.0 / count) if mode == "geometric" else combined
            combined = combined * (used.sum(0) > 0)
        return normalize(combined)


def saliency(
    model: nn.Module,
    photos: Tensor,
    target: Target,
    *,
    layers: Layers | None = None,
    extract: str = "conv1x1",
    aggregate: str = "norm",
    per_layer: PerLayer | None = None,
) -> DetectionMaps:
    """Maps of a detector's ``target`` (:mod:`normgrad.detection.targets`) at ``layers`` (default: every pyramid level), in one pass.

    ``photos``: (N, 3, H, W) RGB in [0, 1], one size (the detector resizes and
    normalises them itself).  The model is left exactly as it was.
    """

    def engine(view: nn.Module, tensors: Tensor, target: Target, chosen: Layers) -> dict[str, Tensor]:
        return run_saliency(view, tensors, target, chosen, extract, aggregate, per_layer)

    return maps_with(engine, model, photos, target, layers)


Method = Callable[[nn.Module, Tensor, Target, Layers], "dict[str, Tensor]"]


def maps_with(method: Method, model: nn.Module, photos: Tensor, target: Target, layers: Layers | None = None) -> DetectionMaps:
    """:func:`saliency` with any map ``method(view, tensors, target, layers) -> {layer: (N, 1, h, w)}`` run on the detector's
    resized input (e.g. ``lambda *a: ng.baselines.gradcam(*a[:3], layers=a[3])`` for Grad-CAM at the pyramid levels)."""
    check_detector(model)
    check_photos(photos)
    photos = photos.to(next(model.parameters()).device)
    resized = resize(model, photos)
    if layers is None:
        layers = _levels(model, resized)
        if not layers:
            raise NormGradError("no module outputs a feature level of this detector's backbone; pass layers=[...]")
    levels = method(on_resized(model, resized), resized.tensors, target, layers)
    return DetectionMaps(levels, {name: resized.to_photo(level) for name, level in levels.items()}, resized)


_LEVELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _levels(model: nn.Module, resized: Resized) -> list[str]:
    """The model's pyramid levels, probed once per model (one no-grad backbone pass on its own input)."""
    if model not in _LEVELS:
        _LEVELS[model] = pyramid_levels(model, resized.tensors[:1])[0]
    return list(_LEVELS[model])


def gradcam(model: nn.Module, photos: Tensor, target: Target, *, layers: Layers | None = None) -> DetectionMaps:
    """Grad-CAM (Captum's ``LayerGradCam``, :func:`normgrad.baselines.gradcam`) of ``target`` at ``layers`` (default: every
    pyramid level) on the detector's resized input, carried back to the photo as :func:`saliency`'s maps are."""
    from normgrad.baselines import gradcam as layer_gradcam

    return maps_with(lambda view, tensors, goal, chosen: layer_gradcam(view, tensors, goal, layers=chosen), model, photos, target, layers)


def detect(model: nn.Module, photos: Tensor) -> list[dict[str, Tensor]]:
    """The detections of ``photos`` (N, 3, H, W) in [0, 1]: boxes in photo pixels, labels, scores (a no-grad pass in eval mode)."""
    check_detector(model)
    check_photos(photos)
    with torch.no_grad(), eval_mode(model):
        output = model(list(photos.to(next(model.parameters()).device)))
    return [{key: value.detach() for key, value in item.items()} for item in output]


__all__ = ["DetectionMaps", "detect", "gradcam", "maps_with", "saliency"]
