"""(a) The planted shortcut: are a patched test image's top proponents patched, and does their map point at the patch?

For each patched test image, its ``k`` top proponents by TracInCP (the
chosen layers, every checkpoint).  Two questions:

* **Which images**: the share of the proponents that carry a patch, against
  the share in the training set and against the same test images without
  their patch (the control).
* **Which pixels**: for each proponent that carries a patch, the AUROC of its
  map at separating the patch's pixels from the others (1: all of the
  patch's pixels rank above all others; 0.5: no preference).  Maps compared:
  normgrad's pixel map of the TracIn score; example-level TracIn, whose map
  is uniform (AUROC 0.5 by construction: that is all an example-level score
  says about pixels); gradient × input of the training image's own label
  logit (the final model); a seeded random map.  Intervals: bootstrap over
  test images (each image's mean AUROC over its patched proponents).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from normgrad.evaluation.influence.setup import Setup
from normgrad.evaluation.training.stats import bootstrap, mean_interval
from normgrad.tracin import influence

MAP_METHODS = ("normgrad TracIn map", "example-level TracIn (uniform map)", "gradient × input", "random")


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(a positive pixel's score > a negative one's), ties counted half (Mann-Whitney U / (n⁺ n⁻))."""
    scores, positive = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(positive, dtype=bool).ravel()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs positive and negative pixels")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gradient_times_input(model: torch.nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    """``x ⊙ ∂f_y/∂x`` summed over channels: (N, 1, H, W), eval mode."""
    model.eval()
    x = inputs.detach().clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), x)
    return (grad * x).sum(1, keepdim=True).detach()


def run(setup: Setup, layers: list[str], top_k: int, batch_size: int, resamples: int,
        progress: Callable[[int, str], Any] | None = None) -> tuple[dict[str, Any], Any]:  # fmt: skip
    """The shortcut study's numbers (see the module docstring), and the patched test images' :class:`Influence` (for the figure)."""
    common = dict(layers=layers, extract="layer", checkpoints=setup.checkpoints, lr=setup.lrs, top_k=top_k, batch_size=batch_size)
    train = (setup.train_x, setup.train_y)
    patched = influence(setup.model, setup.test_x, train, test_labels=setup.test_y, progress=progress, **common)
    plain = influence(setup.model, setup.test_plain_x, train, test_labels=setup.test_y, progress=progress, **common)
    share_patched = setup.patched[patched.proponents].double().mean(1).numpy()
    share_plain = setup.patched[plain.proponents].double().mean(1).numpy()
    opponents_patched = setup.patched[patched.opponents].double().mean(1).numpy()
    generator = torch.Generator().manual_seed(0)
    per_method: dict[str, list[float]] = {name: [] for name in MAP_METHODS}
    pairs = 0
    for t in range(len(setup.test_x)):
        found = {name: [] for name in MAP_METHODS}
        indices = patched.proponents[t]
        baseline = gradient_times_input(setup.model, setup.train_x[indices], setup.train_y[indices])
        for column, index in enumerate(indices.tolist()):
            if not setup.patched[index]:
                continue
            mask = setup.train_mask[index, 0].numpy()
            maps = {
                MAP_METHODS[0]: patched.proponent_maps[t, column, 0].numpy(),
                MAP_METHODS[1]: np.zeros(mask.shape),
                MAP_METHODS[2]: baseline[column, 0].numpy(),
                MAP_METHODS[3]: torch.rand(mask.shape, generator=generator).numpy(),
            }
            for name, plane in maps.items():
                found[name].append(auroc(plane, mask))
            pairs += 1
        if found[MAP_METHODS[0]]:
            for name in MAP_METHODS:
                per_method[name].append(float(np.mean(found[name])))
    options = {"resamples": resamples}
    ours = np.asarray(per_method[MAP_METHODS[0]])
    numbers = {
        "test_images": len(setup.test_x),
        "top_k": top_k,
        "training_share_patched": float(setup.patched.double().mean()),
        "proponents_patched": mean_interval(share_patched, **options).as_dict(),
        "proponents_patched_without_test_patch": mean_interval(share_plain, **options).as_dict(),
        "opponents_patched": mean_interval(opponents_patched, **options).as_dict(),
        "same_class_proponents": float((setup.train_y[patched.proponents] == setup.test_y[:, None]).double().mean()),
        "auroc_pairs": pairs,
        "auroc_images": len(ours),
        "auroc": {name: mean_interval(np.asarray(values), **options).as_dict() for name, values in per_method.items()},
        "auroc_difference": {
            name: bootstrap(_mean_difference, ours, np.asarray(values), **options).as_dict()
            for name, values in per_method.items()
            if name != MAP_METHODS[0]
        },  # fmt: skip
        "examples": _examples(setup, patched),
    }
    return numbers, patched


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a - b, axis=axis)


def _examples(setup: Setup, result, count: int = 4) -> list[dict[str, Any]]:
    """The first ``count`` test images with their proponents: indices, scores, maps (lists, for the figure)."""
    return [
        {"test": t, "label": int(setup.test_y[t]), "proponents": result.proponents[t].tolist(),
         "scores": result.proponent_scores()[t].tolist(), "patched": setup.patched[result.proponents[t]].tolist()}
        for t in range(min(count, len(setup.test_x)))
    ]  # fmt: skip
