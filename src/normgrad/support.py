"""What normgrad does not explain (yet), and the one message for each: support added later changes this file.

=========================================  ==========================================================
case                                       message
=========================================  ==========================================================
a torchvision optical-flow or quantized    names the family and what is supported (image classifiers,
model                                      segmenters, detectors, video models), not "unknown model"
layers needed or none usable               ``--layers`` for the command line, ``layers=[...]`` in Python
=========================================  ==========================================================

Video and volume inputs (N, C, T, H, W) are explained (:mod:`normgrad.video`), and so are torchvision's
detectors, whose own resize is followed exactly (:mod:`normgrad.detection`).
"""

from __future__ import annotations

from typing import Any

LAYERS_HINT = "name layers with --layers on the command line (layers=[...] in Python)"
SUPPORTED_MODELS = (
    "image classifiers, segmentation models, detectors and video models "
    "(e.g. torchvision:resnet50, torchvision:deeplabv3_resnet50, torchvision:fasterrcnn_resnet50_fpn, torchvision:r3d_18, timm:NAME)"
)
TORCHVISION_FAMILIES = {
    "optical_flow": "an optical-flow model (it takes pairs of images)",
    "quantization": "a quantized model (int8 weights have no gradients)",
}


def torchvision_family(torchvision: Any, arch: str) -> str | None:
    """The unsupported torchvision family ``arch`` belongs to (``"optical_flow"``, ``"quantization"``), or ``None``."""
    for family in TORCHVISION_FAMILIES:
        module = getattr(torchvision.models, family, None)
        if module is not None and arch in torchvision.models.list_models(module=module):
            return family
    return None


def unsupported_torchvision_message(arch: str, family: str) -> str:
    return f"torchvision:{arch} is {TORCHVISION_FAMILIES[family]}, which normgrad does not explain yet; it explains {SUPPORTED_MODELS}"


def needs_layers_message(method: str) -> str:
    return f"method {method!r} needs layers: {LAYERS_HINT}"
