"""What the studies share: the methods compared and their maps at one resolution."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from normgrad import pipeline
from normgrad.meta import PAPER_LR
from normgrad.registry import Method, get_method

# the methods compared throughout (issue: NormGrad per layer and combined, selective, meta, adversarial, baselines)
STUDY_METHODS = (
    "normgrad",
    "selective",
    "meta",
    "meta:selective",
    "adversarial",
    "gradcam",
    "gradient",
    "input_x_gradient",
    "guided_backprop",
    "integrated_gradients",
    "random",
    "center",
)


def methods(names: tuple[str, ...] | list[str] = STUDY_METHODS, lr: float = PAPER_LR) -> list[Method]:
    return [get_method(name, lr=lr) for name in names]


def maps_at(method: Method, loaded: Any, x: Tensor, target: Any, layers: list[str], size: tuple[int, int]) -> dict[str, Tensor]:
    """``{layer: map, ..., "combined": map}`` at ``size``, (N, 1, H, W) each (:func:`normgrad.pipeline.method_maps`).

    Layer maps are upsampled as they are; ``combined`` is the product of the
    normalised layer maps (:func:`normgrad.combine`), or the input-level map
    as it is (signed maps keep their sign) for methods without layers.
    """
    combine_mode = "product" if method.uses_layers else "raw"
    return pipeline.method_maps(method, loaded, x, target, layers, size, combine_mode, per_layer=method.uses_layers)
