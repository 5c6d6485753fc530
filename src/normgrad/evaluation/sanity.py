"""Sanity check (Adebayo et al. 2018): cascading model-parameter randomisation.

The weights are re-initialised block by block from the top of the network
down (cumulatively, on a copy of the model); after each step the map of the
originally explained class is recomputed and compared with the original map
by Spearman ρ (with and without absolute values) and SSIM.  A method that
depends on the model must decorrelate.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from normgrad.evaluation.common import maps_at
from normgrad.evaluation.metrics import spearman, ssim
from normgrad.pipeline import predict


def blocks_top_down(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's parametrised blocks, output end first: top-level children, containers opened one level."""
    blocks = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            blocks += [(f"{name}.{sub}", module) for sub, module in child.named_children()]
        else:
            blocks.append((name, child))
    return [(name, block) for name, block in reversed(blocks) if any(True for _ in block.parameters())]


def reinitialise(block: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    for module in block.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def cascading_randomisation(loaded: Any, photos: dict[str, Any], methods: list, *, seed: int = 0) -> list[dict]:
    """Records (photo, method, step, block, rho, rho_abs, ssim); step 0 is the trained model."""
    records = []
    for photo_name, photo in photos.items():
        x = loaded.preprocess(photo)[None]
        size = tuple(x.shape[-2:])
        target = predict(loaded.model, x).classes
        layers = loaded.default_layers(x)
        original = {m.name: maps_at(m, loaded, x, target, layers, size)["combined"] for m in methods}
        randomised = copy.deepcopy(loaded)  # the user's model is never touched
        steps = [("(trained)", None), *blocks_top_down(randomised.model)]
        for step, (block_name, block) in enumerate(steps):
            if block is not None:
                reinitialise(block, seed + step)
            for method in methods:
                current = maps_at(method, randomised, x, target, layers, size)["combined"]
                reference = original[method.name]
                records.append(
                    {
                        "photo": photo_name,
                        "method": method.name,
                        "step": step,
                        "block": block_name,
                        "rho": spearman(reference, current),
                        "rho_abs": spearman(reference, current, absolute=True),
                        "ssim": ssim(reference, current),
                    }
                )
    return records
