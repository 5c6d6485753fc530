"""What the studies share: the methods compared and their maps at one resolution."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import normgrad as ng
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


def methods(names: tuple[str, ...] | list[str] = STUDY_METHODS, lr: float = 2.5e-3) -> list[Method]:
    return [get_method(name, lr=lr) for name in names]


def maps_at(method: Method, loaded: Any, x: Tensor, target: Any, layers: list[str], size: tuple[int, int]) -> dict[str, Tensor]:
    """``{layer: map, ..., "combined": map}`` at ``size``, (N, 1, H, W) each.

    Layer maps are upsampled as they are; ``combined`` is the product of the
    normalised layer maps (:func:`normgrad.combine`), or the input-level map
    as it is (signed maps keep their sign) for methods without layers.
    """
    if not method.needs_model:
        return {"combined": method(None, torch.zeros(x.shape[0], 3, *size))["input"]}
    raw = method(loaded.model, x, target, layers=layers if method.uses_layers else None)
    raw = {name: m.detach().cpu() for name, m in raw.items()}
    if not method.uses_layers:  # kept raw: normalising would erase the sign of signed maps
        return {"combined": ng.upsample(raw["input"], size)}
    out = {name: ng.upsample(m, size) for name, m in raw.items()}
    out["combined"] = ng.combine(raw, size=size)
    return out
