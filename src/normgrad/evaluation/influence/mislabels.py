"""(b) Mislabel detection by self-influence, checked against Captum's TracInCP on the same checkpoints and layers.

Every training image is ranked by ``TracIn(z, z)`` (normgrad, the chosen
layers' own weights, all checkpoints).  Reported: the AUROC of the ranking
at finding the planted mislabels, and the share of them among the top 1 %,
5 % and 10 % of the ranking (with bootstrap intervals over the training
images), against the final model's loss and a random ranking.  Captum's
``TracInCP.self_influence`` runs on a subset with the same checkpoints and
layers; the largest relative difference between the two must be at
rounding level.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from normgrad.evaluation.influence.proponents import auroc
from normgrad.evaluation.influence.setup import Setup
from normgrad.evaluation.training.stats import bootstrap
from normgrad.tracin import self_influence

FRACTIONS = (0.01, 0.05, 0.1)


def captum_self_influence(setup: Setup, layers: list[str], count: int, batch_size: int) -> torch.Tensor:
    """Captum's ``TracInCP.self_influence`` of the first ``count`` training images (checkpoints passed as files in memory)."""
    from captum.influence import TracInCP
    from torch.utils.data import TensorDataset

    states = dict(enumerate(zip(setup.checkpoints, setup.lrs)))

    def load(model: nn.Module, key: int) -> float:
        state, lr = states[key]
        model.load_state_dict(state)
        return lr

    tracin = TracInCP(copy.deepcopy(setup.model).eval(), TensorDataset(setup.train_x[:count], setup.train_y[:count]), list(states),
                      checkpoints_load_func=load, layers=layers, loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                      sample_wise_grads_per_batch=True,
                      batch_size=batch_size)  # fmt: skip
    with warnings.catch_warnings():  # Captum says it set requires_grad on the inputs: expected, not the user's concern
        warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
        return tracin.self_influence()


def run(setup: Setup, layers: list[str], batch_size: int, captum_images: int, resamples: int,
        progress: Callable[[int, str], Any] | None = None) -> tuple[dict[str, Any], Any]:  # fmt: skip
    """The mislabel study's numbers, and normgrad's :class:`SelfInfluence` (for the figure)."""
    result = self_influence(setup.model, (setup.train_x, setup.train_y), layers=layers, extract="layer", checkpoints=setup.checkpoints,
                            lr=setup.lrs, top_k=8, batch_size=batch_size, progress=progress)  # fmt: skip
    count = min(captum_images, len(setup.train_x))
    captum = captum_self_influence(setup, layers, count, batch_size)
    ours = result.scores[:count].double()
    relative = float((ours - captum.double()).abs().max() / captum.double().abs().max())
    with torch.no_grad():
        losses = torch.cat([F.cross_entropy(setup.model(x), y, reduction="none") for x, y in
                            zip(setup.train_x.split(1024), setup.train_y.split(1024))])  # fmt: skip
    flags = setup.mislabelled.numpy()
    random_scores = torch.rand(len(flags), generator=torch.Generator().manual_seed(0)).numpy()
    rankings = {"self-influence (normgrad)": result.scores.numpy(), "loss (final model)": losses.numpy(), "random": random_scores}
    detection = {}
    for name, scores in rankings.items():
        detection[name] = {"auroc": auroc(scores, flags)}
        order = np.argsort(-scores, kind="stable")
        for fraction in FRACTIONS:
            top = np.zeros(len(flags), dtype=bool)
            top[order[: max(1, round(fraction * len(flags)))]] = True
            found = bootstrap(_recall, flags.astype(float), top.astype(float), resamples=resamples)
            detection[name][f"recall_top_{fraction:g}"] = found.as_dict()
    numbers = {
        "training_images": len(flags),
        "mislabelled": int(flags.sum()),
        "captum_images": count,
        "captum_max_relative_difference": relative,
        "captum_rank_agreement": float(np.corrcoef(ours.numpy(), captum.double().numpy())[0, 1]),
        "detection": detection,
        "top_flagged": [
            {"index": int(i), "mislabelled": bool(flags[i]), "label": int(setup.train_y[i]), "true": int(setup.true_y[i])}
            for i in result.top.tolist()
        ],  # fmt: skip
    }
    return numbers, result


def _recall(flags: np.ndarray, chosen: np.ndarray, axis: int = -1) -> np.ndarray:
    """Share of the flagged items that are chosen: Σ flag·chosen / Σ flag."""
    return np.sum(flags * chosen, axis=axis) / np.maximum(np.sum(flags, axis=axis), 1e-12)
