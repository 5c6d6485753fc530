"""Training impact: do the pixels a map selects carry the image's training signal?

Keep only the top-k % pixels of the image by a map (the rest replaced by a
blurred copy, a neutral baseline), take the training gradient
``G_k = ∇_θ CE(f(x_k), y)`` on that image, and compare it with the full
image's ``G = ∇_θ CE(f(x), y)``:

* ``cosine`` — cos(G_k, G);
* ``kept`` — the share of the full step's loss reduction that the masked
  step keeps, ``[L(θ) − L(θ − lr G_k)] / [L(θ) − L(θ − lr G)]`` with the loss
  measured on the full image;
* ``kept_first_order`` — the same share to first order in ``lr``,
  ``G·G_k / ‖G‖²`` (free of the step's non-linearity, hence less noisy).

A map that finds the pixels that matter for training keeps both high with
few pixels; the adversarial map should do worst.  ``y`` is the predicted class.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normgrad.engine.model_state import TensorSlots, eval_mode
from normgrad.evaluation.common import maps_at
from normgrad.pipeline import predict

FRACTIONS = (0.05, 0.10, 0.20, 0.40)


def blurred(x: Tensor, sigma: float = 8.0) -> Tensor:
    """A heavily blurred copy of the (normalised) image: the neutral baseline."""
    from torchvision.transforms.functional import gaussian_blur

    kernel = int(4 * sigma) | 1
    return gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def keep_top(x: Tensor, baseline: Tensor, saliency_map: Tensor, fraction: float) -> Tensor:
    """``x`` where the map is in its top ``fraction`` of pixels, ``baseline`` elsewhere (ties broken by position)."""
    flat = saliency_map.flatten()
    count = max(1, round(fraction * flat.numel()))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(count).indices] = True
    mask = mask.view(1, 1, *saliency_map.shape[-2:])
    return torch.where(mask, x, baseline)


def _gradient(model: Any, params: dict[str, Tensor], x: Tensor, label: Tensor) -> list[Tensor]:
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss = F.cross_entropy(TensorSlots(model)(leaves, x), label)
    return list(torch.autograd.grad(loss, list(leaves.values())))


def _loss(model: Any, params: dict[str, Tensor], x: Tensor, label: Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(TensorSlots(model)(params, x), label))


def training_impact(
    loaded: Any, photos: dict[str, Any], methods: list, *, fractions: tuple[float, ...] = FRACTIONS, lr: float = 2.5e-3
) -> list[dict]:
    """Records (photo, method, layer, fraction, cosine, kept, kept_first_order)."""
    model = loaded.model
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    records = []
    with torch.enable_grad(), eval_mode(model):
        for photo_name, photo in photos.items():
            x = loaded.preprocess(photo)[None]
            label = predict(model, x).classes.to(x.device)
            baseline = blurred(x)
            full = _gradient(model, params, x, label)
            full_flat = torch.cat([g.flatten() for g in full])
            loss_before = _loss(model, params, x, label)

            def stepped(grads: list[Tensor]) -> dict[str, Tensor]:
                return {k: torch.add(v, g, alpha=-lr) for (k, v), g in zip(params.items(), grads)}

            full_reduction = loss_before - _loss(model, stepped(full), x, label)
            layers = loaded.default_layers(x)
            size = tuple(x.shape[-2:])
            for method in methods:
                maps = maps_at(method, loaded, x, label, layers, size)
                for layer, saliency_map in maps.items():
                    for fraction in fractions:
                        masked = keep_top(x, baseline, saliency_map[0, 0], fraction)
                        grads = _gradient(model, params, masked, label)
                        flat = torch.cat([g.flatten() for g in grads])
                        cosine = float(F.cosine_similarity(flat, full_flat, dim=0))
                        first_order = float(flat @ full_flat / (full_flat @ full_flat))
                        reduction = loss_before - _loss(model, stepped(grads), x, label)
                        records.append(
                            {
                                "photo": photo_name,
                                "method": method.name,
                                "layer": layer,
                                "fraction": fraction,
                                "cosine": cosine,
                                "kept": reduction / full_reduction if full_reduction else float("nan"),
                                "kept_first_order": first_order,
                            }
                        )
    return records
