"""Class sensitivity (CVPR paper): Spearman ρ between the maps of the most and the least probable class.

Lower is better: a map that barely changes with the class explains the
image, not the decision.  The paper reports that meta-saliency lowers it.
"""

from __future__ import annotations

from typing import Any

import torch

from normgrad.evaluation.common import maps_at
from normgrad.evaluation.metrics import spearman
from normgrad.pipeline import predict


def class_sensitivity(loaded: Any, photos: dict[str, Any], methods: list) -> list[dict]:
    """Records (photo, method, layer, rho) comparing the most and least probable classes' maps."""
    records = []
    for photo_name, photo in photos.items():
        x = loaded.preprocess(photo)[None]
        logits = predict(loaded.model, x).logits[0]
        most, least = int(logits.argmax()), int(logits.argmin())
        layers = loaded.default_layers(x)
        pair = x.expand(2, -1, -1, -1)
        for method in methods:
            if not method.needs_model:
                continue
            maps = maps_at(method, loaded, pair, torch.tensor([most, least]), layers, tuple(x.shape[-2:]))
            for layer, both in maps.items():
                records.append({"photo": photo_name, "method": method.name, "layer": layer, "rho": spearman(both[0], both[1])})
    return records
