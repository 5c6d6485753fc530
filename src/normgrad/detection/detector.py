"""A torchvision detector run on its own resized input, and the pyramid levels its heads read.

torchvision's Faster / Mask R-CNN, RetinaNet, FCOS and SSD(lite) share one
shape: ``model.transform`` (a ``GeneralizedRCNNTransform``: normalise,
resize, pad) → ``model.backbone`` (an ordered dict of feature levels: the FPN
outputs, or SSD's multi-scale features) → heads → ``transform.postprocess``
(boxes back to the photo's pixels).

:func:`resize` runs the transform alone; :func:`on_resized` gives a view of
the model that starts from the transform's output.  The engine runs that
view on the padded tensor, so every layer's map lies on the model's own
input grid and the boxes in its output are still in photo pixels.  The
view is a shallow copy sharing every submodule with the model (hooks and
eval mode reach the user's modules, and are undone there); only its
``transform`` slot differs — the user's model object is never modified.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from normgrad.detection.geometry import Resized
from normgrad.engine.model_state import Hooks, eval_mode
from normgrad.errors import NormGradError

PHOTO_PIXELS = 8192 * 8192  # a bound on each photo handed to a detector


@dataclass(frozen=True)
class PhotoTensor:
    """A detector's preprocessing: the photo as a (3, H, W) float tensor in [0, 1], at its own size (the model resizes
    and normalises it itself)."""

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        return height, width

    def __call__(self, image: Any) -> Tensor:
        import numpy as np

        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def classes_in_state_dict(state: dict[str, Tensor]) -> int | None:
    """The class count of a torchvision detector's state dict (its heads' output sizes), or ``None`` if it does not say.

    Faster / Mask R-CNN: ``roi_heads.box_predictor.cls_score`` has one output per class; RetinaNet and FCOS:
    ``cls_logits`` has ``A·K`` outputs for ``A`` anchors, ``bbox_reg`` ``4·A``; SSD(lite): the first level's last
    classification and regression convolutions likewise.
    """
    score = state.get("roi_heads.box_predictor.cls_score.weight")
    if isinstance(score, Tensor):
        return int(score.shape[0])
    pairs = [("head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight")]
    ssd = [
        sorted(k for k in state if k.startswith(f"head.{part}_head.module_list.0.") and k.endswith("weight"))
        for part in ("classification", "regression")
    ]
    if all(ssd):  # the last convolution of the first level (SSDlite: a depthwise then a pointwise one)
        pairs.append((ssd[0][-1], ssd[1][-1]))
    for classes, boxes in pairs:
        if isinstance(state.get(classes), Tensor) and isinstance(state.get(boxes), Tensor):
            anchors, remainder = divmod(int(state[boxes].shape[0]), 4)
            if anchors and not remainder and int(state[classes].shape[0]) % anchors == 0:
                return int(state[classes].shape[0]) // anchors
    return None


def is_detector(model: Any) -> bool:
    """A torchvision detector: a ``GeneralizedRCNNTransform`` as ``model.transform`` and a ``model.backbone``."""
    transform = getattr(model, "transform", None)
    return isinstance(model, nn.Module) and type(transform).__name__ == "GeneralizedRCNNTransform" and hasattr(model, "backbone")


def check_detector(model: Any) -> None:
    if not is_detector(model):
        raise NormGradError(
            f"{type(model).__name__} is not a torchvision detector (one with model.transform, a GeneralizedRCNNTransform, and "
            "model.backbone: Faster/Mask R-CNN, RetinaNet, FCOS, SSD); explain classifiers with ng.saliency"
        )


def check_photos(photos: Any) -> Tensor:
    """Photos as the detector takes them: a float tensor (N, 3, H, W) of values in [0, 1] (the model normalises them)."""
    if not isinstance(photos, Tensor) or photos.dim() != 4 or photos.shape[1] != 3 or not photos.is_floating_point():
        shape = tuple(photos.shape) if isinstance(photos, Tensor) else type(photos).__name__
        raise NormGradError(f"photos must be a float tensor (N, 3, H, W) of RGB values in [0, 1]; got {shape}")
    if photos.shape[0] < 1 or photos.shape[-2] * photos.shape[-1] > PHOTO_PIXELS:
        raise NormGradError(f"photos must hold 1 or more images of at most {PHOTO_PIXELS} pixels each; got {tuple(photos.shape)}")
    if not bool(torch.isfinite(photos).all()):
        raise NormGradError("photos hold NaN or infinite values")
    low, high = float(photos.min()), float(photos.max())
    if low < 0.0 or high > 1.0:  # normalised pixels would be normalised twice, silently
        raise NormGradError(
            f"photos must hold RGB values in [0, 1] (the detector normalises them itself); got values in [{low:.3g}, {high:.3g}]"
        )
    return photos


def resize(model: nn.Module, photos: Tensor) -> Resized:
    """The detector's own input for ``photos`` (N, 3, H, W): its transform run alone, in eval mode (fixed size), without gradients."""
    check_detector(model)
    check_photos(photos)
    with torch.no_grad(), eval_mode(model.transform):
        images, _ = model.transform(list(photos))
    photo_size = (int(photos.shape[-2]), int(photos.shape[-1]))
    return Resized(images.tensors, [tuple(int(s) for s in size) for size in images.image_sizes], [photo_size] * photos.shape[0])


class _Passthrough(nn.Module):
    """Stands in for the transform: the input is already resized and padded; ``postprocess`` is the real one's."""

    def __init__(self, transform: nn.Module, resized: Resized) -> None:
        super().__init__()
        self._real = [transform]  # a list: not a submodule (its name stays "transform" in the user's model only)
        self.resized = resized

    def forward(self, images: Any, targets: Any = None) -> tuple[Any, Any]:
        from torchvision.models.detection.image_list import ImageList

        tensors = images if isinstance(images, Tensor) else torch.stack(list(images))
        if tuple(tensors.shape[-2:]) != self.resized.padded_size or tensors.shape[0] != len(self.resized.image_sizes):
            raise NormGradError(
                f"the detector view expects its resized input {tuple(self.resized.tensors.shape)}; got {tuple(tensors.shape)}"
            )
        return ImageList(tensors, list(self.resized.image_sizes)), targets

    def postprocess(self, result: Any, image_shapes: Any, original_image_sizes: Any) -> Any:
        with eval_mode(self._real[0]):  # the real transform is not a module of the view: its flag is set here
            return self._real[0].postprocess(result, image_shapes, list(self.resized.photo_sizes))


def on_resized(model: nn.Module, resized: Resized) -> nn.Module:
    """A view of ``model`` that takes ``resized.tensors`` and returns detections in photo pixels (see the module doc)."""
    check_detector(model)
    view = copy.copy(model)
    modules = dict(model._modules)
    modules["transform"] = _Passthrough(model.transform, resized)
    object.__setattr__(view, "_modules", modules)
    return view


def pyramid_levels(model: nn.Module, example: Tensor | None = None) -> tuple[list[str], list[str]]:
    """The modules whose outputs are the feature levels ``model.backbone`` returns, in order; and the levels no module outputs.

    Found by identity from one no-grad pass of the backbone on ``example``
    (a small blank image by default): a level is the very tensor some
    module returned — the outermost such module.  FPN: ``fpn.layer_blocks.i``
    and RetinaNet/FCOS's ``extra_blocks.p6/p7``; SSD(lite): the feature
    blocks.  Faster R-CNN's ``pool`` level (``F.max_pool2d`` inside
    ``LastLevelMaxPool``, read by the RPN only) and SSD-VGG's L2-rescaled
    first level are computed by no module, so they have no map and come back
    in the second list.
    """
    check_detector(model)
    backbone = model.backbone
    if example is None:
        example = torch.zeros(1, 3, 64, 64, device=next(model.parameters()).device)
    produced: dict[int, tuple[Tensor, str]] = {}  # the tensors are kept: a freed tensor's id could be reused
    with torch.no_grad(), eval_mode(backbone), Hooks() as hooks:
        for name, module in backbone.named_modules():
            if name:
                hooks.add(module.register_forward_hook(_remember(produced, f"backbone.{name}")))
        features = backbone(example)
    if isinstance(features, Tensor):
        features = {"0": features}
    levels, missing = [], []
    for key, tensor in features.items():
        tensor_and_name = produced.get(id(tensor))
        name = tensor_and_name[1] if tensor_and_name is not None and tensor_and_name[0] is tensor else None
        (levels if name is not None else missing).append(name if name is not None else str(key))
    return levels, missing


def _remember(produced: dict[int, tuple[Tensor, str]], name: str):
    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        if isinstance(output, Tensor):
            produced[id(output)] = (output, name)  # a container runs after its children: the outermost module wins

    return hook


__all__ = ["PhotoTensor", "check_detector", "check_photos", "is_detector", "on_resized", "pyramid_levels", "resize"]
