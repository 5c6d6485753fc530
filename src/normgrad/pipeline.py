"""From a photo to maps at its pixel size: the one path the commands, the studies and the examples take.

::

    photo ──prepare──▶ x (3, H, W) ──predict──▶ Prediction: logits, probabilities, top-k
                                   ──targets──▶ (N,) class indices   ("auto" | index | class name)
    x, targets ──run_method──▶ {layer: (N, 1, h, w)}   detached float32 on the CPU
    x, target ──explain_batch──▶ prediction, targets and maps of a batch; engine methods in one pass
               ──to_image_size──▶ {layer | "combined": (N, 1, H, W)}

``to_image_size(maps, size, combine, layers=...)``:

===========================  ==================================================================
``combine``                  the ``"combined"`` map
===========================  ==================================================================
``product|geometric|sum``    :func:`normgrad.combine`: each map upsampled, min-max normalised to
                             [0, 1], combined (one map alone: normalised)
``"raw"``                    the only map, upsampled as it is (signed maps keep their sign)
``"none"``                   none
===========================  ==================================================================

``layers=True`` adds every map upsampled as it is, under its own name.
Upsampling is bilinear (:func:`normgrad.upsample`).  Model-free methods
(``center``, ``random``) are defined on the original image, so
:func:`method_maps` evaluates them at ``size`` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

from normgrad.combine import COMBINE_MODES, combine, upsample
from normgrad.engine.layers import select_layers
from normgrad.engine.model_state import eval_mode
from normgrad.errors import NormGradError
from normgrad.images import check_input_size
from normgrad.outputs import unwrap
from normgrad.targets import class_index, class_indices

COMBINED = "combined"
TargetOption = Union[str, int, None]  # "auto"/None: the prediction; an index; a class name


def prepare(photo: Any, preprocess: Callable[[Any], Tensor]) -> Tensor:
    """The model input (3, H, W) of one photo; refuses inputs above ``images.MAX_INPUT_PIXELS`` and NaN/inf values.

    The size is checked before resizing when ``preprocess`` can tell it
    (:meth:`normgrad.models.Preprocess.input_size`), so an extreme image is
    never resized to a huge tensor.
    """
    if hasattr(preprocess, "input_size"):
        check_input_size(*preprocess.input_size(*photo.size))
    x = preprocess(photo)
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise NormGradError(f"preprocessing must give a (3, H, W) tensor; got {getattr(x, 'shape', type(x).__name__)}")
    check_input_size(*x.shape[-2:])
    if not bool(torch.isfinite(x.sum(dtype=torch.float64))) and not bool(torch.isfinite(x).all()):  # the sum: no mask
        raise NormGradError("the preprocessed image has NaN or infinite values")
    return x


@dataclass(frozen=True)
class Prediction:
    """A batch's class scores: ``logits`` and softmax ``probabilities``, (N, K) float32 on the CPU."""

    logits: Tensor
    probabilities: Tensor

    @property
    def classes(self) -> Tensor:
        """The predicted class of each sample, (N,)."""
        return self.logits.argmax(1)

    def finite(self, index: int) -> bool:
        return bool(torch.isfinite(self.logits[index]).all())

    def top(self, index: int, k: int, class_name: Callable[[int], str] = str) -> list[dict]:
        """Sample ``index``'s ``k`` most probable classes: ``[{"class", "name", "probability"}, ...]``."""
        top = self.probabilities[index].topk(min(k, self.probabilities.shape[1]))
        return [entry(int(c), float(p), class_name) for p, c in zip(top.values, top.indices)]


def entry(cls: int, probability: float, class_name: Callable[[int], str] = str) -> dict:
    """One class as the records show it: ``{"class", "name", "probability"}`` (probability rounded to 6 digits)."""
    return {"class": cls, "name": class_name(cls), "probability": round(probability, 6)}


def predict(model: nn.Module, x: Tensor) -> Prediction:
    """The model's logits and softmax probabilities for ``x`` (eval mode, no gradient)."""
    with torch.no_grad(), eval_mode(model):
        logits = model(x)
    return prediction_of(logits)


def prediction_of(logits: Any) -> Prediction:
    """A :class:`Prediction` from a model output, which must be class scores (N, K) (a Hugging Face ``ModelOutput``'s logits)."""
    logits = unwrap(logits)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise NormGradError(f"the model must output class scores of shape (N, num_classes); got {shape}")
    logits = logits.detach().float().cpu()
    return Prediction(logits, logits.softmax(1))


class ClassLogit:
    """A callable target ``output -> (N,)``: the logit of ``target`` (``None``: each sample's predicted class).

    It is the objective a class target gives (:class:`normgrad.targets.Objective`:
    ``output.gather(1, classes)``, the same maps bitwise), and it keeps the
    output it was given: the logits of the method's own forward pass, so that
    no separate forward is needed for the predictions.
    """

    def __init__(self, target: int | Tensor | None) -> None:
        self.target = target
        self.logits: Tensor | None = None
        self.classes: Tensor | None = None

    def __call__(self, output: Any) -> Tensor:
        if self.logits is None:  # a method of several passes sees the same output each time
            self.logits = prediction_of(output).logits
        classes = class_indices(self.target, output)
        self.classes = classes.detach().cpu()
        return output.gather(1, classes[:, None])[:, 0]


def explain_batch(
    method: Any, model: nn.Module, x: Tensor, target: int | Tensor | None, layers: Sequence[str] | None
) -> tuple[list[int], Prediction, Tensor, dict[str, Tensor] | None]:
    """One batch: ``(usable, prediction, targets, maps)`` for the samples whose logits are finite (``usable``).

    Engine methods (``method.engine``) take the predictions from the logits
    of their own pass: one forward and one backward in all.  Other methods
    (Captum baselines, meta-saliency, whose objective is read off the
    original model) are preceded by a no-gradient forward, and run on the
    usable samples only.  ``prediction`` and ``targets`` cover the usable
    samples; ``maps`` is ``None`` for model-free methods.
    """
    if getattr(method, "engine", False):
        objective = ClassLogit(target)
        maps = run_method(method, model, x, objective, layers)
        assert objective.logits is not None and objective.classes is not None
        prediction, classes = prediction_of(objective.logits), objective.classes
        usable = [i for i in range(x.shape[0]) if prediction.finite(i)]
        if len(usable) < x.shape[0]:
            prediction = Prediction(prediction.logits[usable], prediction.probabilities[usable])
            classes, maps = classes[usable], {name: m[usable] for name, m in maps.items()}
        return usable, prediction, classes, maps
    prediction = predict(model, x)
    usable = [i for i in range(x.shape[0]) if prediction.finite(i)]
    if len(usable) < x.shape[0]:
        x, prediction = x[usable], Prediction(prediction.logits[usable], prediction.probabilities[usable])
        target = target[usable] if isinstance(target, Tensor) and target.dim() == 1 else target
    classes = targets(target, prediction)
    if not usable or not method.needs_model:
        return usable, prediction, classes, None
    return usable, prediction, classes, run_method(method, model, x, classes.to(x.device), layers)


def parse_target(option: TargetOption) -> TargetOption:
    """A target option before any model is loaded: ``None`` for auto, an ``int`` index (≥ 0), or a class name."""
    if option is None or (isinstance(option, str) and option.strip().lower() in ("", "auto")):
        return None
    if isinstance(option, int) or option.strip().lstrip("+-").isdigit():
        index = int(option)
        if index < 0:
            raise NormGradError(f"target class {index} is negative; give an index 0..K-1, a class name or 'auto'")
        return index
    return option.strip()


def resolve_target(option: TargetOption, class_names: Sequence[str]) -> int | None:
    """A parsed target option checked against the model's classes: ``None`` (auto) or a class index.

    Names match case-insensitively, a unique substring will do; unknown names
    list the closest class names.
    """
    option = parse_target(option)
    if option is None:
        return None
    if isinstance(option, int):
        if option >= len(class_names):
            raise NormGradError(
                f"target class {option} is out of range: the model has {len(class_names)} classes (0..{len(class_names) - 1})"
            )
        return option
    return class_index(option, class_names)


def targets(target: int | None, prediction: Prediction) -> Tensor:
    """(N,) class indices: the predicted classes for ``None``, else ``target`` for every sample (range checked)."""
    return class_indices(target, prediction.logits)


def resolve_layers(loaded: Any, names: Sequence[str] | None, example: Tensor | None = None) -> list[str]:
    """Layer names checked against the model (unknown names list the closest ones); ``None``: the default layers."""
    if names is None:
        return list(loaded.default_layers(example))
    return [name for name, _ in select_layers(loaded.model, list(names))]


def run_method(method: Any, model: nn.Module | None, x: Tensor, target: Any, layers: Sequence[str] | None) -> dict[str, Tensor]:
    """A registry method's maps ``{name: (N, 1, h, w)}``, detached float32 on the CPU (``layers`` only where it uses them)."""
    maps = method(model, x, target, layers=list(layers) if method.uses_layers and layers is not None else None)
    return {name: m.detach().float().cpu() for name, m in maps.items()}


def model_free_maps(method: Any, count: int, size: tuple[int, int]) -> dict[str, Tensor]:
    """A model-free method (``center``, ``random``) on ``count`` images of ``size`` = (H, W), as defined on the original."""
    return run_method(method, None, torch.zeros(count, 3, *size), None, None)


def to_image_size(
    maps: Mapping[str, Tensor], size: tuple[int, int], combine_mode: str = "product", *, layers: bool = False
) -> dict[str, Tensor]:
    """Maps at ``size`` = (H, W): each map (``layers=True``) and/or their ``"combined"`` map; see the module table."""
    size = (int(size[0]), int(size[1]))
    out: dict[str, Tensor] = {}
    if layers:
        if COMBINED in maps and combine_mode != "none":
            raise NormGradError(f"a layer is named {COMBINED!r}, which is the combined map's name; pass combine='none'")
        out.update({name: upsample(m.float(), size) for name, m in maps.items()})
    if combine_mode == "raw":
        if len(maps) != 1:
            raise NormGradError(f"combine='raw' needs exactly one map; got {len(maps)} ({', '.join(maps)})")
        (only,) = maps.values()
        out[COMBINED] = upsample(only.float(), size)
    elif combine_mode in COMBINE_MODES:
        out[COMBINED] = combine(maps, size=size, mode=combine_mode)
    elif combine_mode != "none":
        raise NormGradError(f"unknown combine mode {combine_mode!r}; valid: {', '.join([*COMBINE_MODES, 'raw', 'none'])}")
    return out


def at_image_size(
    method: Any,
    maps: Mapping[str, Tensor] | None,
    size: tuple[int, int],
    combine_mode: str = "product",
    *,
    count: int = 1,
    layers: bool = False,
    one_as_is: bool = False,
) -> dict[str, Tensor]:
    """Maps at an image's size = (H, W): the one way every caller (explain, the explorer, the studies) gets there.

    ``maps`` are a method's maps (:func:`run_method`), or ``None`` for a model-free method (``center``,
    ``random``), which is defined on the original image and so evaluated at ``size`` itself (the same map for
    ``count`` images).  Then :func:`to_image_size` with ``combine_mode`` (the module table) and ``layers``;
    ``one_as_is``: a single map is upsampled as it is (``"raw"``: signed maps keep their sign) whatever
    ``combine_mode`` says.
    """
    size = (int(size[0]), int(size[1]))
    if maps is None:
        maps = {name: m.expand(count, -1, -1, -1) for name, m in model_free_maps(method, 1, size).items()}
    if one_as_is and len(maps) == 1 and combine_mode != "none":
        combine_mode = "raw"
    return to_image_size(maps, size, combine_mode, layers=layers)


def method_maps(
    method: Any,
    loaded: Any,
    x: Tensor,
    target: Any,
    layers: Sequence[str] | None,
    size: tuple[int, int],
    combine_mode: str = "product",
    *,
    per_layer: bool = False,
) -> dict[str, Tensor]:
    """``run_method`` then :func:`at_image_size`; model-free methods are evaluated at ``size`` itself (one map, as it is)."""
    maps = run_method(method, loaded.model, x, target, layers) if method.needs_model else None
    return at_image_size(method, maps, size, combine_mode, count=x.shape[0], layers=per_layer, one_as_is=maps is None)


def check_finite(maps: Mapping[str, Tensor]) -> None:
    """Refuse maps with NaN or infinite values (e.g. a meta step so large that the weights overflow)."""
    for name, m in maps.items():
        if not bool(torch.isfinite(m).all()):
            bad = int((~torch.isfinite(m)).sum())
            raise NormGradError(f"the {name} map has {bad} NaN or infinite value(s) (a meta --lr too large?)")
