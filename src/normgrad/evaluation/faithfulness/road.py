"""ROAD: RemOve And Debias (Rong et al., ICML 2022) — remove pixels by a map, impute them, see what the model still says.

For each removal fraction ``f`` (default 10 %, 20 %, …, 90 %) and each
image, the ``round(f · H·W)`` pixels ranked first are removed and filled by
:mod:`noisy linear imputation <normgrad.evaluation.faithfulness.imputation>`
(on un-normalised pixels), and the model's softmax probability of the target
class is read:

=============  ==========================================================  ==============
curve          pixels removed at fraction ``f``                            a good map
=============  ==========================================================  ==============
``morf``       the most relevant first (highest map values)                 low
``lerf``       the least relevant first (lowest map values)                 high
=============  ==========================================================  ==============

Summaries per image: the mean of each curve over the fractions, and
``combined = (mean lerf − mean morf) / 2`` (higher: more faithful), the
same combination as pytorch-grad-cam's ``ROADCombined``.  Ties in a map are
broken in a seeded random order, the same for every method; the imputation
noise for (image, fraction, order) is seeded the same way, so two methods
that remove the same pixels see the same image (paired comparisons).

Differences from pytorch-grad-cam 1.5.7 (``metrics/road.py``), whose
imputation system is the same:

* pixels: here the imputation and its noise act on un-normalised pixels in
  [0, 1] (the paper's setting); pytorch-grad-cam imputes the normalised
  tensor, so its σ = 0.01 is 0.01 · std in pixel units.  The noise-free
  imputation commutes with the normalisation, so only the noise differs.
* how many pixels: here exactly ``round(f · H·W)``; pytorch-grad-cam
  removes ``map ≥ np.percentile(map, 100·(1 − f))`` (interpolated
  percentile), so ties (flat maps, Grad-CAM's zeros) remove more or fewer.
* score: here the softmax probability; pytorch-grad-cam uses whatever
  target callable it is given, as the change from the unmodified image
  (the change cancels in ``combined``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normgrad.engine.model_state import eval_mode
from normgrad.errors import NormGradError
from normgrad.evaluation.faithfulness.imputation import NOISE, impute_seeded
from normgrad.evaluation.faithfulness.pixels import IDENTITY, PixelSpace, check_batch, class_probability, first_pixels, ranking

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ORDERS = ("morf", "lerf")


@dataclass(frozen=True)
class RoadCurves:
    """Per image (N,) and fraction (F,): the target's probability after removal; ``original`` (N,) before."""

    fractions: tuple[float, ...]
    morf: Tensor  # (N, F)
    lerf: Tensor  # (N, F)
    original: Tensor  # (N,)

    @property
    def morf_mean(self) -> Tensor:
        return self.morf.mean(1)

    @property
    def lerf_mean(self) -> Tensor:
        return self.lerf.mean(1)

    @property
    def combined(self) -> Tensor:
        """``(mean lerf − mean morf) / 2`` per image (N,): higher is more faithful."""
        return (self.lerf_mean - self.morf_mean) / 2


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in fractions)
    if not fractions or any(not 0 < f < 1 for f in fractions):
        raise NormGradError(f"removal fractions must lie strictly between 0 and 1; got {list(fractions)}")
    return fractions


def road(
    model: nn.Module,
    inputs: Tensor,
    maps: Tensor,
    targets: Tensor,
    *,
    space: PixelSpace = IDENTITY,
    fractions: Sequence[float] = FRACTIONS,
    noise: float = NOISE,
    seed: int = 0,
    first_index: int = 0,
    batch_size: int = 64,
) -> RoadCurves:
    """ROAD curves of ``maps`` (N, 1, H, W) for ``inputs`` (N, C, H, W, model space) and ``targets`` (N,).

    ``first_index``: the index of ``inputs[0]`` in a larger set (so a set split
    into batches draws the same noise as the whole set at once).
    """
    check_batch(inputs, maps, targets)
    fractions = check_fractions(fractions)
    pixels = space.to_pixels(inputs.detach().cpu().double())
    height, width = inputs.shape[-2:]
    orders = {"morf": ranking(maps, seed), "lerf": ranking(-maps, seed)}
    curves = {}
    with eval_mode(model):
        original = class_probability(model, inputs, targets, batch_size)
        for o, (name, order) in enumerate(orders.items()):
            scores = torch.empty(len(inputs), len(fractions), dtype=torch.float64)
            for f, fraction in enumerate(fractions):
                removed = first_pixels(order, round(fraction * height * width), (height, width))
                imputed = impute_seeded(pixels, removed, [[seed, first_index + i, f, o] for i in range(len(inputs))], noise)
                model_inputs = space.to_inputs(imputed).to(dtype=inputs.dtype, device=inputs.device)
                scores[:, f] = class_probability(model, model_inputs, targets, batch_size)
            curves[name] = scores
    return RoadCurves(fractions, curves["morf"], curves["lerf"], original)
