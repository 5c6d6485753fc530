"""Targets: the scalar objective ``J`` (one per sample) that is back-propagated.

Following Captum and TorchRay, ``target`` may be

* ``None`` — each sample's predicted class; ``J`` is its logit;
* an ``int`` — the same class for every sample;
* a list / tuple / 1-D tensor — one class per sample;
* a callable ``output -> (N,)`` — any scalar function of the model output;
* :class:`TrainingLoss` — ``J = −cross_entropy(output, labels)`` per sample,
  so that positive means "helps training";
* :class:`Unit` — an intermediate unit (a layer's channel, optionally at one
  location) as the objective;
* :class:`~normgrad.segmentation.Region` — a segmenter's class logits summed
  over a region of the input (a mask, a box or the predicted region).

Every target reads the model output through :func:`normgrad.outputs.unwrap`:
a Hugging Face ``ModelOutput`` is its ``logits`` (callables receive them
too).

``J`` is differentiated as is: signed aggregates (``sum``, ``max``) follow
the sign of ``∂J/∂a``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from normgrad.errors import NormGradError
from normgrad.formulas.layout import Layout
from normgrad.outputs import unwrap
from normgrad.segmentation import Region

ClassIndices = Union[int, Sequence[int], Tensor, None]


@dataclass(frozen=True)
class TrainingLoss:
    """``J = −cross_entropy(output, labels)`` per sample; labels default to the predicted class."""

    labels: ClassIndices = None


@dataclass(frozen=True)
class Unit:
    """An intermediate unit as the objective: ``J = a[:, channel, row, col]`` of ``layer`` (``(frame, row, col)`` on videos and volumes).

    Without ``location`` the channel's spatial mean is used.  ``channel`` and
    ``(row, col)`` are read in the layer's layout as the maps are: for
    channels-last maps and tokens ``(row, col)`` is the position on the
    image grid (prefix tokens have none).
    """

    layer: str
    channel: int
    location: tuple[int, ...] | None = None

    def read(self, activation: Tensor, layout: Layout | None = None) -> Tensor:
        """The unit's value per sample, (N,), from the layer's activation in ``layout`` (the engine decides it).

        Without a layout, ``activation`` must be (N, C, H, W), (N, C, T, H, W) or (N, C).
        """
        if layout is None:
            if activation.dim() not in (2, 4, 5):
                raise NormGradError(f"target unit at {self.layer!r}: pass the layout of a {activation.dim()}-D activation")
            layout = Layout("nchw", tuple(activation.shape[2:])) if activation.dim() >= 4 else Layout("vector")
        grid = layout.to_nchw(activation)
        channels, sides = grid.shape[1], tuple(grid.shape[2:])
        if not 0 <= self.channel < channels:
            raise NormGradError(f"target unit channel {self.channel} is out of range for {self.layer!r}, which has {channels} channels")
        plane = grid[:, self.channel]
        if self.location is None:
            return plane.mean(dim=tuple(range(1, plane.dim())))
        location = tuple(self.location)
        size = "×".join(str(side) for side in sides)
        if len(location) != len(sides):
            what = "(frame, row, col)" if len(sides) == 3 else "(row, col)"
            raise NormGradError(f"target unit location {self.location} must be {what} on {self.layer!r}'s {size} grid")
        if not all(0 <= index < side for index, side in zip(location, sides)):
            raise NormGradError(f"target unit location {self.location} is outside {self.layer!r}'s {size} grid")
        return plane[(slice(None), *location)].clone()


Target = Union[ClassIndices, Callable[[Any], Tensor], TrainingLoss, Unit, Region]


def class_indices(spec: ClassIndices, output: Any, what: str = "target") -> Tensor:
    """Per-sample class indices (N,) from ``spec``; ``None`` means the predicted class."""
    logits = _logits(unwrap(output), what)
    batch, num_classes = logits.shape
    if spec is None:
        return logits.detach().argmax(1)
    if isinstance(spec, bool) or not isinstance(spec, (int, Sequence, Tensor)):
        raise NormGradError(
            f"{what} must be None, an int, a per-sample list/tensor of ints, a callable, TrainingLoss or Unit; got {type(spec).__name__}"
        )
    indices = torch.as_tensor(spec, device=logits.device)
    if indices.is_floating_point() or indices.is_complex():
        raise NormGradError(f"{what} classes must be integers; got {indices.dtype}")
    indices = indices.long()
    if indices.dim() == 0:
        indices = indices.expand(batch)
    if indices.shape != (batch,):
        raise NormGradError(f"{what} has {indices.numel()} classes for a batch of {batch}; give one int or one per sample")
    bad = (indices < 0) | (indices >= num_classes)
    if bool(bad.any()):
        raise NormGradError(
            f"{what} class {int(indices[bad][0])} is out of range: the model has {num_classes} classes (0..{num_classes - 1})"
        )
    return indices


def _logits(output: Any, what: str) -> Tensor:
    if not isinstance(output, Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        dense = isinstance(output, Tensor) and output.dim() == 4 or isinstance(output, dict) and "out" in output
        hidden = hasattr(output, "last_hidden_state")  # a Hugging Face model without a head
        if dense:
            instead = "a Region target (a class inside a mask, a box or its predicted region) or a callable target"
        elif hidden:
            instead = "the model with its head (AutoModelForImageClassification) or a callable target on its hidden states"
        else:
            instead = "a callable target"
        raise NormGradError(f"{what} by class needs model outputs of shape (N, num_classes); got {shape}. Pass {instead} instead")
    return output


class Objective:
    """``J`` for a target spec: ``scores(output, unit_value, batch, image_size) -> (N,)``."""

    def __init__(self, target: Target) -> None:
        self.target = target

    @property
    def unit(self) -> Unit | None:
        return self.target if isinstance(self.target, Unit) else None

    def scores(self, output: Any, unit_value: Tensor | None, batch: int, image_size: tuple[int, int] | None = None) -> Tensor:
        """One score per sample; ``image_size`` (H, W) of the input places a :class:`Region` on the output's grid."""
        target = self.target
        output = unwrap(output)
        if isinstance(target, Unit):
            assert unit_value is not None
            scores = unit_value
        elif isinstance(target, TrainingLoss):
            labels = class_indices(target.labels, output, "TrainingLoss labels")
            scores = -F.cross_entropy(output, labels, reduction="none")
        elif isinstance(target, Region):
            if image_size is None:
                raise NormGradError("a Region target needs the input's size (H, W) to place the region on the output's grid")
            scores = target.scores(output, image_size)
        elif callable(target) and not isinstance(target, Tensor):
            scores = target(output)
            if not isinstance(scores, Tensor):
                raise NormGradError(f"a callable target must return a tensor of shape (N,); got {type(scores).__name__}")
        else:
            indices = class_indices(target, output)  # type: ignore[arg-type]
            scores = output.gather(1, indices[:, None])[:, 0]
        if scores.shape != (batch,):
            raise NormGradError(f"the objective must give one score per sample, shape ({batch},); got {tuple(scores.shape)}")
        return scores


def class_index(name: str, class_names: Sequence[str]) -> int:
    """The index of a class given by name (case-insensitive; a unique substring will do); typos get the closest names."""
    lowered = name.strip().lower()
    exact = [i for i, n in enumerate(class_names) if n.lower() == lowered]
    if exact:
        return exact[0]
    partial = [i for i, n in enumerate(class_names) if lowered in n.lower()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        options = ", ".join(f"{i}: {class_names[i]}" for i in partial[:6])
        raise NormGradError(f"class name {name!r} is ambiguous: {options}{', ...' if len(partial) > 6 else ''}")
    close = difflib.get_close_matches(lowered, [n.lower() for n in class_names], n=5, cutoff=0.6)
    by_lower = {n.lower(): n for n in class_names}
    hint = f"closest names: {', '.join(repr(by_lower[c]) for c in close)}" if close else "no class name is close"
    raise NormGradError(f"unknown class name {name!r}; {hint} (or give an index 0..{len(class_names) - 1})")
