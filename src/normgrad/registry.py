"""One registry of saliency methods, shared by the CLI, meta-saliency and the evaluations.

Every method is called as ``method(model, inputs, target, layers=..., **options)``
and returns ``{layer name: (N, 1, h, w) map}``.  Names:

* ``normgrad``, ``selective``, and any ``<extract>+<aggregate>`` pair
  (``conv3x3+max``, ``layer+norm``, ...) — the engine, all layers in one pass;
* ``meta`` / ``adversarial`` — meta-saliency around NormGrad; ``meta:<base>``
  and ``adversarial:<base>`` around any other method (``meta:selective``);
* ``gradient``, ``input_x_gradient``, ``guided_backprop``,
  ``integrated_gradients``, ``gradcam`` — Captum baselines;
* ``center``, ``random`` — trivial baselines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from normgrad import baselines
from normgrad.errors import NormGradError, did_you_mean
from normgrad.formulas.aggregate import AGGREGATES
from normgrad.formulas.extract import EXTRACTS
from normgrad.meta import PAPER_LR, PAPER_STEPS, meta_saliency
from normgrad.methods import normgrad, normgrad_selective, saliency


@dataclass(frozen=True)
class Method:
    """A registered method: its name, the function, whether ``layers`` matter, and a title for figures."""

    name: str
    function: Callable[..., dict]
    uses_layers: bool
    title: str
    needs_model: bool = True
    inner_step: bool = False  # meta / adversarial: takes lr and steps
    engine: bool = False  # an engine method: its objective sees the logits of the inputs as given (predictions in the same pass)
    pair: tuple[str, str] | None = None  # (extract, aggregate) of an engine method: several of them share one pass per layer

    def __call__(self, model: Any, inputs: Any, target: Any = None, *, layers: Any = None, **options: Any) -> dict:
        if self.uses_layers and layers is None:
            raise NormGradError(f"method {self.name!r} needs layers=[...]")
        return self.function(model, inputs, target, layers=layers, **options)


_FIXED: dict[str, Method] = {
    "normgrad": Method("normgrad", normgrad, True, "NormGrad", engine=True, pair=("conv1x1", "norm")),
    "selective": Method("selective", normgrad_selective, True, "NormGrad selective", engine=True, pair=("scaling", "positive_norm")),
    "gradient": Method("gradient", baselines.gradient, False, "gradient"),
    "input_x_gradient": Method("input_x_gradient", baselines.input_x_gradient, False, "input × gradient"),
    "guided_backprop": Method("guided_backprop", baselines.guided_backprop, False, "guided backprop"),
    "integrated_gradients": Method("integrated_gradients", baselines.integrated_gradients, False, "integrated gradients"),
    "gradcam": Method("gradcam", baselines.gradcam, True, "Grad-CAM"),
    "center": Method("center", baselines.center, False, "center", needs_model=False),
    "random": Method("random", baselines.random, False, "random", needs_model=False),
}
CAPTUM_BASELINES = ("gradient", "input_x_gradient", "guided_backprop", "integrated_gradients", "gradcam")


def method_names() -> list[str]:
    """The names :func:`get_method` accepts (pairs and meta variants summarised)."""
    return [*_FIXED, "meta", "adversarial", "meta:<method>", "adversarial:<method>", "<extract>+<aggregate>"]


def get_method(name: str, *, lr: float = PAPER_LR, steps: int = PAPER_STEPS) -> Method:
    """The method called ``name``; meta variants take ``lr`` (finite, ≥ 0) and ``steps`` (≥ 0).

    Unknown names list the closest valid ones.
    """
    name = name.strip()
    if name in _FIXED:
        return _FIXED[name]
    for prefix, adversarial in (("meta", False), ("adversarial", True)):
        if name == prefix or name.startswith(prefix + ":"):
            base = get_method(name.partition(":")[2] or "normgrad")
            if not base.needs_model:
                raise NormGradError(f"{name!r}: {base.name} does not use the model, so an inner training step cannot change it")
            check_step(lr, steps)
            function = partial(_meta, base=base, lr=lr, steps=steps, adversarial=adversarial)
            title = f"{'adversarial' if adversarial else 'meta'} {base.title}"
            return Method(name, function, base.uses_layers, title, inner_step=True)
    if "+" in name:
        extract, _, aggregate = name.partition("+")
        if extract in EXTRACTS and aggregate in AGGREGATES:
            function = partial(saliency, extract=extract, aggregate=aggregate)
            return Method(name, function, True, f"{extract} + {aggregate}", engine=True, pair=(extract, aggregate))
        hints = [f"{what} {part!r} is unknown{did_you_mean(part, valid)}" for what, part, valid in
                 (("extract", extract, EXTRACTS), ("aggregate", aggregate, AGGREGATES)) if part not in valid]  # fmt: skip
        raise NormGradError(
            f"unknown extract+aggregate {name!r}: {'; '.join(hints)}; extracts: {', '.join(EXTRACTS)}; aggregates: {', '.join(AGGREGATES)}"
        )
    spelled = [
        *_FIXED,
        "meta",
        "adversarial",
        *(f"{p}:{m}" for p in ("meta", "adversarial") for m in _FIXED if m not in ("center", "random")),
    ]
    raise NormGradError(f"unknown method {name!r}{did_you_mean(name, spelled)}; valid: {', '.join(method_names())}")


def check_step(lr: float, steps: int) -> None:
    """The inner step's ``lr`` must be finite and ≥ 0 (adversarial methods step up the loss), ``steps`` an integer ≥ 0."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise NormGradError(f"lr must be a finite number ≥ 0 (the adversarial methods step up the loss); got {lr}")
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise NormGradError(f"steps must be an integer ≥ 0; got {steps}")


def _meta(
    model: Any,
    inputs: Any,
    target: Any = None,
    *,
    base: Method,
    lr: float,
    steps: int,
    adversarial: bool,
    layers: Any = None,
    **options: Any,
):
    return meta_saliency(model, inputs, target, method=base.function, lr=lr, steps=steps, adversarial=adversarial, layers=layers, **options)
