"""The per-image training-impact study.

For each image ``x`` (label ``y``), method ``m``, fraction ``k`` and fill:

1. ``x_k`` keeps the top-``k`` pixels of ``x`` by ``m``'s map, the rest is
   the fill (the dataset mean, a blurred copy of ``x``, or ROAD's imputation from the kept pixels);
2. the paper's inner step on ``x_k``: ``θ_k = θ − lr ∇_θ CE(f_θ(x_k), y)``
   (eval mode, plain SGD, every parameter; the full image's step is
   ``θ_full``);
3. its effect on the *unmasked* image, ``δ_self = L(x; θ) − L(x; θ_k)``, and
   on a pool of held-out images of class ``y``,
   ``δ_class = L̄_y(θ) − L̄_y(θ_k)`` (measured at the lrs in ``class_lrs``:
   each costs a pass over the pool per step); the full step's ``Δ`` likewise;
4. the same to first order in ``lr``, at every lr: ``⟨∇L(x), G_k⟩`` and
   ``⟨∇L̄_y, G_k⟩``.

The share ``Σ δ / Σ Δ`` (see :mod:`.stats`) is 1 when the kept pixels do
what the whole image does for training, 0 when they do nothing.  Meta and
adversarial maps take their inner step with the same ``lr`` as the one
measured, so the learning-rate axis moves both.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from normgrad.errors import NormGradError
from normgrad.evaluation.training.inner_step import InnerStep, dot
from normgrad.evaluation.training.masking import FILLS, fill_for, keep, keep_road, tie_breaker, top_mask
from normgrad.evaluation.training.saliency_maps import META_METHODS, method_maps, study_method

FRACTIONS = (0.05, 0.10, 0.20, 0.50)
LEARNING_RATES = (1e-4, 2.5e-3, 1e-2)
PAPER_LR = 2.5e-3


@dataclass
class Group:
    """Images of one size (and, with a pool, one class) processed together."""

    inputs: Tensor  # (n, C, H, W), model space
    labels: Tensor  # (n,)
    indices: list[int]  # positions in the study
    layers: list[str]
    pool: Tensor | None = None  # held-out images of the group's class
    pool_labels: Tensor | None = None


@dataclass
class Regime:
    """A model and the images the study runs on."""

    name: str
    description: str
    model: nn.Module  # eval mode, for the maps
    groups: list[Group]
    channel_mean: Tensor  # the dataset mean in model space, (C,)
    measure_dtype: torch.dtype = torch.float64
    vectorize: bool = True
    seed: int = 0
    examples: dict[str, Any] = field(default_factory=dict)
    pixel_std: Tensor | None = None  # per channel (C,): model input = (pixel − mean) / std; the road fill needs it

    @property
    def count(self) -> int:
        return sum(len(g.labels) for g in self.groups)


@dataclass
class PerImageResult:
    """Per-image reductions; arrays are indexed [lr, method, fill, fraction, image] (full steps: [lr, image])."""

    regime: str
    description: str
    methods: list[str]
    fills: list[str]
    fractions: list[float]
    lrs: list[float]
    labels: np.ndarray
    loss_before: np.ndarray
    full_self: np.ndarray
    masked_self: np.ndarray
    first_full_self: np.ndarray  # [image]: ‖G‖²
    first_masked_self: np.ndarray
    full_class: np.ndarray | None = None
    masked_class: np.ndarray | None = None
    first_full_class: np.ndarray | None = None
    first_masked_class: np.ndarray | None = None
    seconds: float = 0.0

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in vars(self).items() if isinstance(v, np.ndarray)}


def run_per_image(
    regime: Regime,
    methods: Sequence[str],
    *,
    fractions: Sequence[float] = FRACTIONS,
    lrs: Sequence[float] = LEARNING_RATES,
    fills: Sequence[str] = FILLS,
    class_lrs: Sequence[float] = (PAPER_LR,),
    progress: Callable[[int, str], Any] | None = None,
) -> PerImageResult:
    """Run the study on every image of ``regime``; see the module docstring."""
    unknown = [f for f in fills if f not in FILLS]
    if unknown:
        raise NormGradError(f"unknown fills {unknown}; valid: {', '.join(FILLS)}")
    started = time.perf_counter()
    n, shape = regime.count, (len(lrs), len(methods), len(fills), len(fractions))
    has_pool = all(g.pool is not None for g in regime.groups)
    out: dict[str, np.ndarray] = {
        "labels": np.zeros(n, np.int64),
        "loss_before": np.zeros(n),
        "full_self": np.zeros((len(lrs), n)),
        "masked_self": np.full((*shape, n), np.nan),
        "first_full_self": np.zeros(n),
        "first_masked_self": np.full((*shape, n), np.nan),
    }
    if has_pool:
        out |= {
            "full_class": np.full((len(lrs), n), np.nan),
            "masked_class": np.full((*shape, n), np.nan),
            "first_full_class": np.zeros(n),
            "first_masked_class": np.full((*shape, n), np.nan),
        }
    measured = regime.model if regime.measure_dtype == next(regime.model.parameters()).dtype else copy.deepcopy(regime.model)
    step = InnerStep(measured.to(regime.measure_dtype), vectorize=regime.vectorize)
    bar = progress(n * len(methods), regime.name) if progress else None
    try:
        for group in regime.groups:
            _run_group(regime, group, step, methods, fractions, lrs, fills, class_lrs, out)
            if bar:
                bar.update(len(group.labels) * len(methods))
    finally:
        if bar:
            bar.close()
    return PerImageResult(
        regime.name,
        regime.description,
        list(methods),
        list(fills),
        list(fractions),
        list(lrs),
        seconds=time.perf_counter() - started,
        **out,  # type: ignore[arg-type]
    )


def _run_group(
    regime: Regime,
    group: Group,
    step: InnerStep,
    methods: Sequence[str],
    fractions: Sequence[float],
    lrs: Sequence[float],
    fills: Sequence[str],
    class_lrs: Sequence[float],
    out: dict[str, np.ndarray],
) -> None:
    x, y, at = group.inputs, group.labels, group.indices
    measured_x = x.to(step.dtype)
    full = step.gradients(x, y)
    before = step.losses(x, y)
    out["labels"][at] = y.numpy()
    out["loss_before"][at] = before.double().numpy()
    out["first_full_self"][at] = dot(full, full).double().numpy()
    pool_gradient = pool_before = None
    if group.pool is not None:
        pool_gradient = step.pool_gradient(group.pool, group.pool_labels)
        pool_before = step.losses(group.pool, group.pool_labels).mean()
        out["first_full_class"][at] = dot(full, pool_gradient).double().numpy()
    for li, lr in enumerate(lrs):
        out["full_self"][li, at] = (before - step.losses_after_steps(full, lr, measured_x, y)).double().numpy()
        if pool_before is not None and lr in class_lrs:
            out["full_class"][li, at] = (
                (pool_before - step.pool_losses_after_steps(full, lr, group.pool, group.pool_labels)).double().numpy()
            )
    ties = tie_breaker(len(y), *x.shape[-2:], seed=regime.seed * 1_000_003 + at[0])
    fill_values = {kind: fill_for(kind, x, regime.channel_mean) for kind in fills if kind != "road"}
    if "road" in fills and regime.pixel_std is None:
        raise NormGradError(f"the road fill needs the regime's pixel standard deviation ({regime.name} has none)")
    for mi, name in enumerate(methods):
        # a meta map depends on lr: one map per lr, each measured at its own lr; other maps once, measured at every lr
        for map_lr in lrs if name in META_METHODS else [None]:
            method = study_method(name, lr=map_lr or PAPER_LR)
            maps = method_maps(method, regime.model, x, y, group.layers, seed=regime.seed * 7919 + at[0])
            measured_lrs = [(li, lr) for li, lr in enumerate(lrs) if map_lr is None or lr == map_lr]
            for ki, fraction in enumerate(fractions):
                mask = top_mask(maps, fraction, ties)
                for fi, kind in enumerate(fills):
                    if kind == "road":  # noise seeded per image and fraction: the same for every method
                        kept = keep_road(x, mask, regime.pixel_std, [[regime.seed, i, ki, 13] for i in at])
                    else:
                        kept = keep(x, mask, fill_values[kind])
                    masked_gradient = step.gradients(kept, y)
                    first_self = dot(masked_gradient, full).double().numpy()
                    first_class = dot(masked_gradient, pool_gradient).double().numpy() if pool_gradient is not None else None
                    for li, lr in measured_lrs:
                        after = step.losses_after_steps(masked_gradient, lr, measured_x, y)
                        out["masked_self"][li, mi, fi, ki, at] = (before - after).double().numpy()
                        out["first_masked_self"][li, mi, fi, ki, at] = first_self
                        if first_class is not None:
                            out["first_masked_class"][li, mi, fi, ki, at] = first_class
                        if pool_before is not None and lr in class_lrs:
                            pool_after = step.pool_losses_after_steps(masked_gradient, lr, group.pool, group.pool_labels)
                            out["masked_class"][li, mi, fi, ki, at] = (pool_before - pool_after).double().numpy()
