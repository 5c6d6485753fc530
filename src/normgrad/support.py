"""What normgrad does not explain (yet), and the one message for each: support added later changes this file.

=========================================  ==========================================================
case                                       message
=========================================  ==========================================================
a torchvision video, detection, optical-   names the family and what is supported (image classifiers
flow or quantized model                    and segmentation models), instead of "unknown model"
a 5-D input (N, C, T, H, W)                a video clip or a volume: maps are 2-D (N, 1, h, w)
a model that resizes its input inside      (detectors' ``GeneralizedRCNNTransform``): its layers are
                                           not on the grid of the input given, so no map is exact
layers needed or none usable               ``--layers`` for the command line, ``layers=[...]`` in Python
=========================================  ==========================================================
"""

from __future__ import annotations

from typing import Any

LAYERS_HINT = "name layers with --layers on the command line (layers=[...] in Python)"
SUPPORTED_MODELS = "image classifiers and segmentation models (e.g. torchvision:resnet50, torchvision:deeplabv3_resnet50, timm:NAME)"
TORCHVISION_FAMILIES = {
    "video": "a video classifier (it takes clips (N, C, T, H, W))",
    "detection": "an object detector (it resizes its input internally and outputs boxes)",
    "optical_flow": "an optical-flow model (it takes pairs of images)",
    "quantization": "a quantized model (int8 weights have no gradients)",
}
RESIZING_MODULES = ("GeneralizedRCNNTransform",)  # torchvision detectors: normalise and resize inside forward


def torchvision_family(torchvision: Any, arch: str) -> str | None:
    """The unsupported torchvision family ``arch`` belongs to (``"video"``, ``"detection"``, ...), or ``None``."""
    for family in TORCHVISION_FAMILIES:
        module = getattr(torchvision.models, family, None)
        if module is not None and arch in torchvision.models.list_models(module=module):
            return family
    return None


def unsupported_torchvision_message(arch: str, family: str) -> str:
    return f"torchvision:{arch} is {TORCHVISION_FAMILIES[family]}, which normgrad does not explain yet; it explains {SUPPORTED_MODELS}"


def volume_input_message(shape: tuple[int, ...]) -> str:
    return (
        f"inputs must be images of shape (N, C, H, W); got a 5-D tensor {shape}, a video clip or a volume (N, C, T, H, W): "
        "normgrad's maps are 2-D (N, 1, h, w), so video and volume models are not supported yet (explain frames one by one "
        "with an image model)"
    )


def resizes_input(model: Any) -> str | None:
    """The type name of a module that resizes the model's input inside its forward (a detector's transform), or ``None``."""
    return next((type(m).__name__ for m in model.modules() if type(m).__name__ in RESIZING_MODULES), None)


def resizing_model_message(kind: str) -> str:
    return (
        f"the model resizes its input internally ({kind}, as detectors do), so its layers are not on the grid of the input "
        f"given and no map would be exact; normgrad explains {SUPPORTED_MODELS}"
    )


def needs_layers_message(method: str) -> str:
    return f"method {method!r} needs layers: {LAYERS_HINT}"
