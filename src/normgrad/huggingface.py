"""Hugging Face ``transformers`` image models from a local ``save_pretrained`` folder (``hf:DIR``), offline.

The folder holds what ``model.save_pretrained(DIR)`` and
``image_processor.save_pretrained(DIR)`` write: ``config.json``, the weights
(``model.safetensors``) and ``preprocessor_config.json``.  From them:

* the model — ``AutoModelForImageClassification``, or
  ``AutoModelForSemanticSegmentation`` when the config's architecture is a
  segmenter (``SegformerForSemanticSegmentation``...); never remote code,
  never a download (``local_files_only``);
* the class names — the config's ``id2label``;
* the preprocessing — the image processor's ``image_mean``/``image_std``
  (after ``rescale_factor`` = 1/255) and its size: ``{"height", "width"}``
  or ``{"shortest_edge"}``.  As for every model in normgrad, nothing is
  cropped: the shorter side is resized to that size, the aspect kept, when
  the model takes other input sizes (ConvNeXt, ResNet, Swin, DINOv2,
  SegFormer...); a model that refuses them (ViT's fixed position
  embeddings) gets exactly ``height × width``.  One forward pass at another
  size decides which.

The model's forward returns a ``ModelOutput``; every target reads its
``logits`` (:mod:`normgrad.outputs`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normgrad.engine.model_state import eval_mode
from normgrad.errors import NormGradError
from normgrad.models import DEFAULT, LoadedModel, Preprocess

PROCESSOR_FILE = "preprocessor_config.json"
PREFIX = "hf:"


def load_folder(folder: str | Path, weights: Any = DEFAULT, num_classes: int | None = None) -> LoadedModel:
    """The model saved in ``folder`` (``weights=None``: its architecture with random weights), ready for saliency."""
    transformers = _transformers()
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise NormGradError(
            f"hf:{folder} {what}; give a folder written by model.save_pretrained(DIR) and image_processor.save_pretrained(DIR)"
        )
    if num_classes is not None:
        raise NormGradError(f"hf:{folder} has the classes of its config (id2label); num_classes does not apply to a saved model")
    if weights not in (DEFAULT, None):
        raise NormGradError(f"hf:{folder} holds its own weights; --weights applies to torchvision: and timm: models (or None for random)")
    config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    architectures = list(getattr(config, "architectures", None) or [])
    segmenter = any(name.endswith("ForSemanticSegmentation") for name in architectures)
    headless = architectures and not segmenter and not any("ImageClassification" in name for name in architectures)
    if headless and not any("ObjectDetection" in name for name in architectures):  # detectors: refused below, naming what works
        # a saved backbone (ViTModel) would load into a classifier with a random head: scores of nothing, so refuse
        raise NormGradError(
            f"hf:{folder} is a {config.model_type!r} model without an image-classification or semantic-segmentation head "
            f"({', '.join(architectures)}); normgrad explains class scores: save the model of the task "
            "(AutoModelForImageClassification, AutoModelForSemanticSegmentation), or pass a callable target in Python"
        )
    auto = transformers.AutoModelForSemanticSegmentation if segmenter else transformers.AutoModelForImageClassification
    try:
        if weights is None:
            model = auto.from_config(config)
        else:
            model = auto.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except ValueError as error:
        if "Unrecognized configuration class" not in str(error):
            raise NormGradError(f"cannot load hf:{folder}: {str(error).splitlines()[0]}") from error
        if any("ObjectDetection" in name for name in architectures):
            raise NormGradError(
                f"hf:{folder} is a Hugging Face object detector ({', '.join(architectures)}), which normgrad does not explain; "
                "torchvision's detectors are supported (--task detect)"
            ) from None
        raise NormGradError(
            f"hf:{folder} is a {config.model_type!r} model without an image-classification or semantic-segmentation head "
            f"({', '.join(architectures) or 'no architecture named'}); normgrad explains class scores: save the model "
            "of the task (AutoModelForImageClassification, AutoModelForSemanticSegmentation), or pass a callable target in Python"
        ) from None
    except OSError as error:
        raise NormGradError(f"cannot read the weights of hf:{folder}: {str(error).splitlines()[0]}") from error
    model.eval()
    preprocess = processor_preprocess(path, model)
    return LoadedModel(f"{PREFIX}{folder}", model, preprocess, class_names(config))


def class_names(config: Any) -> list[str]:
    """The config's ``id2label`` in index order (``class i`` where a label is missing)."""
    labels = {int(key): str(value) for key, value in (getattr(config, "id2label", None) or {}).items()}
    count = int(getattr(config, "num_labels", len(labels)) or len(labels))
    return [labels.get(i, f"class {i}") for i in range(count)]


def processor_preprocess(folder: Path, model: nn.Module) -> Preprocess:
    """The :class:`~normgrad.models.Preprocess` of the folder's image-processor config (see the module docstring)."""
    file = folder / PROCESSOR_FILE
    if not file.is_file():
        raise NormGradError(
            f"{folder} has no {PROCESSOR_FILE}, so its input size and normalisation are unknown; "
            "save the image processor there too: AutoImageProcessor.from_pretrained(NAME).save_pretrained(DIR)"
        )
    try:
        settings = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise NormGradError(f"cannot read {file}: {error}") from error
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if settings.get("do_normalize", True):
        mean = _triple(settings.get("image_mean", (0.5, 0.5, 0.5)), "image_mean", file)
        std = _triple(settings.get("image_std", (0.5, 0.5, 0.5)), "image_std", file)
    rescale = float(settings.get("rescale_factor", 1 / 255)) if settings.get("do_rescale", True) else 1.0
    if abs(rescale * 255 - 1) > 1e-6:  # Preprocess maps pixels to [0, 1]; other scales are the mean/std's business
        mean = tuple(m / (rescale * 255) for m in mean)  # type: ignore[assignment]
        std = tuple(s / (rescale * 255) for s in std)  # type: ignore[assignment]
    height, width = _size(settings, file)
    fixed = None if accepts_other_sizes(model, height, width) else (height, width)
    return Preprocess(size=min(height, width), mean=mean, std=std, fixed_size=fixed)


def _size(settings: dict, file: Path) -> tuple[int, int]:
    size = settings.get("size")
    if settings.get("do_center_crop") and isinstance(settings.get("crop_size"), dict):
        size = settings["crop_size"]  # the size the model was trained at (normgrad resizes, it never crops)
    if isinstance(size, int):
        return size, size
    if isinstance(size, dict) and "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if isinstance(size, dict) and "shortest_edge" in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise NormGradError(f"{file}: its size {size!r} is not {{'height', 'width'}}, {{'shortest_edge'}} or an int")


def _triple(values: Any, what: str, file: Path) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        values = [values] * 3
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        raise NormGradError(f"{file}: {what} must be three numbers (one per RGB channel); got {values!r}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def accepts_other_sizes(model: nn.Module, height: int, width: int) -> bool:
    """Whether the model runs on a non-square input larger than ``height × width`` (no gradient, eval mode)."""
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, 3, height + 32, width + 64, device=device))
    except Exception:  # ViT: "Input image size (...) doesn't match model (...)"
        return False
    return True


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as error:
        raise NormGradError("hf: models need Hugging Face transformers: pip install 'normgrad[hf]'") from error
    return transformers


__all__ = ["PREFIX", "accepts_other_sizes", "class_names", "load_folder", "processor_preprocess"]
