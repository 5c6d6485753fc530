"""One map per image and method at the input resolution, from normgrad's registry.

Layer methods (NormGrad, selective, their meta and adversarial variants,
Grad-CAM) give one map per layer in one pass; the layers are upsampled,
min-max normalised and multiplied (:func:`normgrad.combine`, the product).
Input-level methods (Captum's gradient and input × gradient) are used as
they are; ``random`` gets a fresh seed per batch so no two batches share
their noise.  The target is each image's label (its training class).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import normgrad as ng
from normgrad.registry import Method, get_method

METHODS = ("normgrad", "selective", "meta", "meta:selective", "adversarial", "gradcam", "gradient", "input_x_gradient", "random", "center")
META_METHODS = ("meta", "meta:selective", "adversarial")


def study_method(name: str, lr: float) -> Method:
    """The registry's method ``name``; meta variants step with ``lr``."""
    return get_method(name, lr=lr)


def method_maps(
    method: Method,
    model: nn.Module | None,
    inputs: Tensor,
    labels: Tensor,
    layers: Sequence[str],
    *,
    batch_size: int = 256,
    seed: int = 0,
    progress: Callable[[int], Any] | None = None,
) -> Tensor:
    """(N, 1, H, W) float32 maps of ``method`` for ``inputs``, target = ``labels``, on the CPU."""
    size = tuple(inputs.shape[-2:])
    maps = []
    bar = progress(len(inputs)) if progress else None
    try:
        for start in range(0, len(inputs), batch_size):
            x, y = inputs[start : start + batch_size], labels[start : start + batch_size]
            if method.name == "random":
                raw = method(model, x, y, seed=seed * 1_000_003 + start)
            elif method.needs_model:
                raw = method(model, x, y, layers=list(layers) if method.uses_layers else None)
            else:
                raw = method(model, x, y)
            raw = {name: m.detach().float().cpu() for name, m in raw.items()}
            maps.append(ng.combine(raw, size=size) if method.uses_layers else ng.upsample(raw["input"], size))
            if bar:
                bar.update(len(x))
    finally:
        if bar:
            bar.close()
    return torch.cat(maps)
