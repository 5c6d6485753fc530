"""Every map the faithfulness study scores: registry methods (combined and per layer), the explain default, the anchors.

A *subject* is what one row of the study is about: a method and a layer
(``"combined"`` for the method's final map).  Registry layer methods
combine their layers by the product of min-max normalised, upsampled maps
(:func:`normgrad.combine`, as ``normgrad explain``); input-level methods
(gradient, …) are used as they are; the explain default
(:mod:`normgrad.defaults`) on its own layers, each with its own method,
product; the anchors (:mod:`.anchors`) on the default's layers, combined
their own way.  ``random`` gets a seed per image, so a batch equals its
items.  Each subject's seconds per image are recorded (the whole call: the
model's forward/backward included).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import normgrad as ng
from normgrad.defaults import layered
from normgrad.evaluation.faithfulness.anchors import ANCHORS, anchor_maps
from normgrad.registry import get_method

DEFAULT = "default"


@dataclass(frozen=True)
class Subject:
    method: str
    layer: str = "combined"

    @property
    def label(self) -> str:
        return self.method if self.layer == "combined" else f"{self.method} @ {self.layer}"


def method_maps(
    name: str,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    layers: Sequence[str],
    default_methods: dict[str, str],
    *,
    per_layer: bool = True,
    seed: int = 0,
    first_index: int = 0,
    lr: float = 2.5e-3,
) -> tuple[dict[Subject, Tensor], float]:
    """``{Subject: (N, 1, H, W) map}`` of one method for a batch, and the seconds the call took."""
    size = tuple(inputs.shape[-2:])
    started = time.perf_counter()
    if name in ANCHORS:
        out = {Subject(name): anchor_maps(name, model, inputs, targets, list(default_methods))}
        return out, time.perf_counter() - started
    if name == DEFAULT:
        method, method_layers = layered(default_methods), list(default_methods)
    else:
        method, method_layers = get_method(name, lr=lr), list(layers)
    if method.name == "random":
        seeds = [seed * 1_000_003 + first_index + i for i in range(len(inputs))]
        raw = {"input": torch.cat([method(model, inputs[i : i + 1], targets[i : i + 1], seed=s)["input"] for i, s in enumerate(seeds)])}
    elif method.uses_layers:
        raw = method(model, inputs, targets, layers=method_layers)
    else:
        raw = method(model, inputs, targets)
    raw = {layer: m.detach().float().cpu() for layer, m in raw.items()}
    seconds = time.perf_counter() - started
    if not method.uses_layers:
        return {Subject(name): ng.upsample(raw["input"], size)}, seconds
    out = {Subject(name): ng.combine(raw, size=size)}
    if per_layer and len(raw) > 1:
        out.update({Subject(name, layer): ng.upsample(m, size) for layer, m in raw.items()})
    return out, seconds
