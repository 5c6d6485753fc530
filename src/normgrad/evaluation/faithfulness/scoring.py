"""Score maps with every faithfulness metric: per image, per subject (method × layer).

=====================  ============================================================  =============
metric                 per image                                                     better
=====================  ============================================================  =============
``road_combined``      ROAD ``(mean LeRF − mean MoRF) / 2`` (:mod:`.road`)            higher
``road_morf``          mean MoRF probability over the fractions                      lower
``road_lerf``          mean LeRF probability over the fractions                      higher
``deletion``           RISE deletion AUC, zero substrate (:mod:`.insertion_deletion`) lower
``insertion``          RISE insertion AUC, blurred substrate                         higher
``deletion_road``      deletion AUC on the ROAD-imputation substrate                 lower
``insertion_road``     insertion AUC on the ROAD-imputation substrate                higher
=====================  ============================================================  =============
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from normgrad.evaluation.faithfulness.insertion_deletion import causal_metric
from normgrad.evaluation.faithfulness.pixels import PixelSpace
from normgrad.evaluation.faithfulness.road import road

METRICS = ("road_combined", "road_morf", "road_lerf", "deletion", "insertion", "deletion_road", "insertion_road")
HIGHER_IS_BETTER = {"road_combined": True, "road_morf": False, "road_lerf": True, "deletion": False, "insertion": True,
                    "deletion_road": False, "insertion_road": True}  # fmt: skip


@dataclass(frozen=True)
class ScoreSettings:
    """How the metrics run: ROAD's fractions and noise, the insertion/deletion steps (pixels per iteration)."""

    fractions: Sequence[float]
    iterations: int  # insertion/deletion on RISE's substrates: ⌈H·W / iterations⌉ pixels per iteration
    road_iterations: int | None  # on the ROAD substrate (a sparse solve per iteration: fewer); None: not run
    noise: float = 0.01
    seed: int = 0

    def step(self, height: int, width: int, iterations: int) -> int:
        return -(-height * width // iterations)


def score_maps(
    model: nn.Module, inputs: Tensor, maps: Tensor, targets: Tensor, space: PixelSpace, settings: ScoreSettings, first_index: int = 0
) -> dict[str, np.ndarray]:
    """``{metric: (N,) values}`` of one subject's maps on one batch."""
    common = {"space": space, "noise": settings.noise, "seed": settings.seed, "first_index": first_index}
    curves = road(model, inputs, maps, targets, fractions=settings.fractions, **common)
    out = {"road_combined": curves.combined, "road_morf": curves.morf_mean, "road_lerf": curves.lerf_mean}
    height, width = inputs.shape[-2:]
    for mode in ("deletion", "insertion"):
        step = settings.step(height, width, settings.iterations)
        out[mode] = causal_metric(model, inputs, maps, targets, mode=mode, step=step, **common).auc
        if settings.road_iterations:
            step = settings.step(height, width, settings.road_iterations)
            out[f"{mode}_road"] = causal_metric(model, inputs, maps, targets, mode=mode, step=step, substrate="road", **common).auc
    return {name: values.numpy() for name, values in out.items()}
