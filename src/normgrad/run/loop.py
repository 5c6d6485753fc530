"""The batch loop: batches of read images → predictions → maps → maps at each image's size → one :class:`Explained` each.

Per batch (images of one input size, :func:`~normgrad.run.loading.batches`):

1. predictions at the model's own size (``predict_at="model"``): one no-gradient forward of the images at the
   model's preprocessing (grouped by size); they give the ``auto`` target;
2. :func:`normgrad.pipeline.explain_batch` at the size explained: engine methods in one forward and backward;
3. :func:`normgrad.pipeline.at_image_size` brings each image's maps to its own size: a :class:`Pending` result that
   the writer threads complete (upsampling and combining run beside the model, not between its batches).

An image whose output is NaN or infinite, or whose maps are, is handed to ``fail`` with the reason; a model that
raises on the batch fails each of its images with the model's own message, and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from normgrad import pipeline
from normgrad.errors import NormGradError
from normgrad.run.loading import Item, batches, to_device
from normgrad.run.records import Explained
from normgrad.run.report import printable

NOT_FINITE = "the model's output is NaN or infinite for this image"
MODEL_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, AssertionError, NotImplementedError)  # a model refusing an input


@dataclass
class BatchLoop:
    """What every batch of a run uses (see the module docstring)."""

    method: Any
    loaded: Any
    setup: Any  # normgrad.run.plan.Setup
    device: str
    batch_size: int
    top_k: int = 5
    combine: str = "product"
    save_layers: bool = False
    say: Callable[[str], None] = print
    channels_last: bool = False  # batches in channels-last memory (normgrad.run.layout): faster depthwise convolutions on the CPU

    def run(self, items: Iterator[Item], done: Callable[[Item, Pending], None], fail: Callable[[Item, str], None],
            after_batch: Callable[[], None] | None = None) -> None:  # fmt: skip
        """Explain every item; ``done(item, pending)`` (call ``pending()`` for the :class:`Explained` at the image's size)
        or ``fail(item, why)`` for each, in batch order."""
        for batch in batches(items, self.batch_size, lambda item: fail(item, item.error or "unreadable")):
            try:
                results = self._batch_in_a_layout_the_model_takes(batch)
            except NormGradError:
                raise
            except MODEL_ERRORS as error:
                if len(batch) > 1:  # find the image the model refuses: each alone
                    results = []
                    for item in batch:
                        try:
                            results += self.batch([item])
                        except MODEL_ERRORS as alone:
                            results.append((item, model_message(alone)))
                else:
                    results = [(batch[0], model_message(error))]
            for item, result in results:
                if isinstance(result, str):
                    fail(item, result)
                else:
                    done(item, result)
            if after_batch is not None:
                after_batch()

    def _batch_in_a_layout_the_model_takes(self, batch: list[Item]) -> list[tuple[Item, Pending | str]]:
        """:meth:`batch`; a model that refuses a channels-last batch the layout probe did not show (another input size)
        gets this batch and the rest of the run in the usual layout, which it was given before channels-last existed."""
        try:
            return self.batch(batch)
        except MODEL_ERRORS:
            if not self.channels_last:
                raise
        self.channels_last = False
        return self.batch(batch)

    def batch(self, batch: list[Item]) -> list[tuple[Item, Pending | str]]:
        """One batch: each item with its :class:`Pending` result (the maps still at the model's resolution), or why it
        was skipped."""
        if self.setup.task == "segment":
            from normgrad.run.segment import segment_batch

            return segment_batch(self, batch)
        setup, model = self.setup, self.loaded.model
        results: list[tuple[Item, Pending | str]] = []
        own = self._predict_at_model_size(batch)
        target: Any = setup.target
        if own is not None:
            finite = [i for i in range(len(batch)) if own.finite(i)]
            results += [(batch[i], NOT_FINITE) for i in range(len(batch)) if i not in finite]
            batch, own = [batch[i] for i in finite], _rows(own, finite)
            if not batch:
                return results
            if target is None:
                target = own.classes
        x = self._batch_tensor([item.tensor for item in batch])
        if isinstance(target, torch.Tensor):
            target = target.to(x.device)
        usable, prediction, classes, maps = pipeline.explain_batch(self.method, model, x, target, setup.layers)
        results += [(batch[i], NOT_FINITE) for i in range(len(batch)) if i not in set(usable)]
        batch = [batch[i] for i in usable]
        shown = _rows(own, usable) if own is not None else prediction
        for i, item in enumerate(batch):
            target_class = int(classes[i])
            height, width = item.tensor.shape[-2:]
            at = item.predict_tensor.shape[-2:] if item.predict_tensor is not None else (height, width)
            explained = Explained(
                index=item.index,
                name=item.name,
                image=str(item.path),
                size=tuple(item.photo.size),
                maps={},
                predictions=shown.top(i, self.top_k, self.loaded.class_name),
                target=pipeline.entry(target_class, float(shown.probabilities[i, target_class]), self.loaded.class_name),
                predicted_at=(int(at[1]), int(at[0])),
                explained_at=(int(width), int(height)),
                label=item.label,
                photo=item.photo,
            )
            own_maps = {name: m[i : i + 1] for name, m in maps.items()} if maps is not None else None
            results.append((item, Pending(self, item, explained, own_maps)))
        return results

    def at_image_size(self, item: Item, maps: dict | None) -> dict | str:
        """One image's ``{output: (H, W) float32 array}`` at its size — the combined map first, then each layer's with
        ``save_layers``; one output per layer with ``combine="none"`` — or why it is refused (a NaN map)."""
        per_layer = self.setup.per_layer
        mode = self.combine if self.combine != "none" else ("none" if per_layer else "raw")
        size = (item.photo.size[1], item.photo.size[0])
        at_size = pipeline.at_image_size(self.method, maps, size, mode, layers=per_layer or self.save_layers)
        outputs = list(at_size) if per_layer else [pipeline.COMBINED, *(name for name in at_size if name != pipeline.COMBINED)]
        try:
            pipeline.check_finite({name: at_size[name] for name in outputs})
        except NormGradError as error:
            return str(error)
        planes = {name: at_size[name][0, 0].numpy() for name in outputs}
        self._warn_constant(item, planes)
        return planes

    def _predict_at_model_size(self, batch: list[Item]) -> pipeline.Prediction | None:
        """The predictions at the model's own size (``None``: every image is explained at that size already)."""
        if all(item.predict_tensor is None for item in batch):
            return None
        inputs = [item.predict_tensor if item.predict_tensor is not None else item.tensor for item in batch]
        logits: list[Any] = [None] * len(batch)
        for shape in dict.fromkeys(tuple(t.shape) for t in inputs):
            group = [i for i, t in enumerate(inputs) if tuple(t.shape) == shape]
            found = pipeline.predict(self.loaded.model, self._batch_tensor([inputs[i] for i in group]))
            for k, i in enumerate(group):
                logits[i] = found.logits[k]
        return pipeline.prediction_of(torch.stack(logits))

    def _batch_tensor(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The (N, C, H, W) batch on the device, in the run's memory layout."""
        x = to_device(tensors, self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _warn_constant(self, item: Item, planes: dict) -> None:
        constant = [name for name, plane in planes.items() if plane.min() == plane.max()]
        if constant:  # written as computed, but it points nowhere: say so
            value = float(planes[constant[0]].flat[0])
            self.say(f"normgrad: warning: {printable(str(item.path))}: the {', '.join(constant)} map is constant ({value:g} everywhere): "
                     "no location moves the objective there (in a product, one layer's map is zero)")  # fmt: skip


@dataclass
class Pending:
    """An image explained whose maps are still at the model's resolution: calling it brings them to the image's size
    (upsampling, combination, checks) and gives the :class:`Explained`, or why it is refused.  The writer threads call
    it, so that the main thread only runs the model."""

    loop: BatchLoop
    item: Item
    explained: Explained
    maps: dict | None  # {layer: (1, 1, h, w)}, or None for a model-free method

    def __call__(self) -> Explained | str:
        planes = self.loop.at_image_size(self.item, self.maps)
        if isinstance(planes, str):
            return planes
        self.explained.maps = planes
        return self.explained


def _rows(prediction: pipeline.Prediction, rows: list[int]) -> pipeline.Prediction:
    if len(rows) == prediction.logits.shape[0]:
        return prediction
    return pipeline.Prediction(prediction.logits[rows], prediction.probabilities[rows])


def model_message(error: BaseException) -> str:
    """The model's own message, on one line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return f"the model failed on this image: {type(error).__name__}: {text[:300]}"
