"""``task="detect"`` (``normgrad explain --task detect``): one map per detection of a torchvision detector.

Per photo: the detector's detections scoring at least ``min_score`` (at most ``max_detections``, best first) are
numbered 1, 2, ...; the outputs are

* ``<name>`` — the map of all of them (``J`` = the sum of their scores);
* ``<name>_det<k>`` — the map of detection ``k`` alone (``J`` = its score, matched by box and class:
  :class:`normgrad.detection.DetectionScore`);

each map at every pyramid level of the one pass (``normgrad.detection``), combined and carried back to the photo's
pixels, its overlay drawn with the numbered boxes.  A detection's levels are combined as ``combine`` says (most
detections are read from one level); the map of all of them always sums its levels, since its detections are read
from different levels and a product of their maps would be zero wherever they do not overlap.  The record lists the
detections (box in photo pixels, class,
score, output); the gallery shows them as the image's predictions.  A photo without a detection above
``min_score`` is skipped with one line saying its best score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from normgrad import detection as det
from normgrad.errors import NormGradError
from normgrad.run.loading import Item

MIN_SCORE = 0.5
MAX_DETECTIONS = 10
MAX_DETECTIONS_BOUND = 100
DETECT_BATCH = 4  # copies of one photo per pass (one per detection explained) when no batch size is given
MATCH_IOU = 0.9  # the explained pass finds the detection again: same class, nearly the same box
ALL_COMBINE = "sum"  # the map of all detections: they are read from different levels, whose product would be zero


def check_task(options: Any, method: Any) -> None:
    """``task`` known, ``min_score``/``max_detections`` only with ``detect``, and the options ``detect`` would ignore refused."""
    # the task's name is checked with the other choices (ExplainOptions.check)
    if options.task != "detect":
        detect_only = (("--min-score", options.min_score), ("--max-detections", options.max_detections))
        given = [flag for flag, value in detect_only if value is not None]
        if given:
            raise NormGradError(f"{' and '.join(given)} only apply to --task detect")
        return
    if options.min_score is not None and not (isinstance(options.min_score, (int, float)) and 0.0 <= float(options.min_score) <= 1.0):
        raise NormGradError(f"--min-score must be a score in [0, 1]; got {options.min_score!r}")
    count = options.max_detections
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_DETECTIONS_BOUND):
        raise NormGradError(f"--max-detections must be an integer in 1..{MAX_DETECTIONS_BOUND}; got {count!r}")
    refused = [
        ("--size", options.size is not None, "the detector resizes each photo itself"),
        ("--target", options.target is not None, "each detection above --min-score is explained; choose them with --min-score"),
        ("--save-layers", options.save_layers, "each detection's map combines the pyramid levels"),
        ("--combine none", options.combine == "none", "choose product, geometric or sum"),
    ]
    for flag, given, why in refused:
        if given:
            raise NormGradError(f"{flag} does not apply to --task detect: {why}")
    if method is not None and method.pair is None and method.name != "gradcam":
        raise NormGradError(f"--task detect explains detections with normgrad, selective, EXTRACT+AGGREGATE or gradcam; not {method.name}")


def check_detector_model(loaded: Any) -> None:
    if not det.is_detector(loaded.model):
        raise NormGradError(
            f"--task detect needs a torchvision detector (e.g. --model torchvision:fasterrcnn_resnet50_fpn --weights FILE); "
            f"{loaded.name} is not one"
        )


def refuse_detector(loaded: Any) -> None:
    """A detector explained as a classifier: one line saying to add ``--task detect``."""
    if det.is_detector(loaded.model):
        raise NormGradError(f"{loaded.name} is a detector: add --task detect (one map per detection above --min-score)")


def settings(options: Any, method: Any, loaded: Any, layers: list[str]) -> dict:
    return {
        "task": "detect",
        "model": loaded.name,
        "weights": None,  # filled in by into_folder
        "method": "normgrad" if method is None else method.name,
        "input": "the photo (the detector resizes it)",
        "layers": layers,
        "combine": options.combine,
        "combine_all": ALL_COMBINE,
        "min_score": min_score(options),
        "max_detections": max_detections(options),
        **options.output_settings(),
    }


def min_score(options: Any) -> float:
    return MIN_SCORE if options.min_score is None else float(options.min_score)


def max_detections(options: Any) -> int:
    return MAX_DETECTIONS if options.max_detections is None else int(options.max_detections)


def layers_of(loaded: Any, names: list[str] | None) -> list[str]:
    """The layers explained: ``names`` (checked against the model), else every pyramid level a module outputs."""
    if names is not None:
        from normgrad.engine.layers import select_layers

        return [name for name, _ in select_layers(loaded.model, names)]
    levels, _ = det.pyramid_levels(loaded.model)
    if not levels:
        raise NormGradError(f"{loaded.name}: no module outputs a level of its backbone's feature pyramid; pass --layers")
    return levels


def files_of(options: Any, name: str) -> list[str]:
    """The files planned for one photo: its all-detections map and one per detection slot."""
    stems = [name, *(f"{name}_det{k}" for k in range(1, max_detections(options) + 1))]
    return [f"{stem}{suffix}" for stem in stems for suffix in options.suffixes()]


@dataclass
class DetectLoop:
    """The batch loop of ``task="detect"``: photo by photo, that photo's detections in batches of copies."""

    loaded: Any
    layers: list[str]
    method: Any  # a registry method (an engine pair, or gradcam), or None: normgrad
    device: str
    batch_size: int
    combine: str
    min_score: float
    max_detections: int

    def run(self, items: Iterator[Item], done: Callable[[Item, Callable[[], Any]], None], fail: Callable[[Item, str], None],
            after_batch: Callable[[], None] | None = None) -> None:  # fmt: skip
        """As :meth:`normgrad.run.loop.BatchLoop.run`: ``done(item, pending)``, ``pending()`` the :class:`Explained`."""
        from normgrad.run.loop import MODEL_ERRORS, model_message

        for item in items:
            if item.error is not None or item.tensor is None:
                fail(item, item.error or "unreadable")
                continue
            try:
                explained = self.explain(item)
            except NormGradError as error:
                fail(item, str(error))
            except MODEL_ERRORS as error:
                fail(item, model_message(error))
            else:
                done(item, partial(_ready, explained))  # the run's contract: a result the writers complete; this one is complete
            if after_batch is not None:
                after_batch()

    def explain(self, item: Item) -> Any:
        from normgrad.detection.drawing import box_caption, draw_boxes
        from normgrad.run.records import Explained

        photo = item.tensor[None].to(self.device)
        found = det.detect(self.loaded.model, photo)[0]
        order = torch.argsort(found["scores"], descending=True)
        kept = order[found["scores"][order] >= self.min_score][: self.max_detections]
        if len(kept) == 0:
            best = f"its best scores {float(found['scores'].max()):.3f}" if len(found["scores"]) else "it has no detection"
            raise NormGradError(f"no detection scores ≥ {self.min_score:g} ({best}); lower --min-score to explain weaker ones")
        boxes, labels, scores = found["boxes"][kept], found["labels"][kept], found["scores"][kept]
        maps = self._maps(photo, boxes, labels)
        names = [self.loaded.class_name(int(label)) for label in labels]
        detections = [
            {"number": k + 1, "box": [round(float(v), 2) for v in box], "class": int(label), "name": name,
             "score": round(float(score), 6), "output": f"det{k + 1}"}
            for k, (box, label, name, score) in enumerate(zip(boxes, labels, names, scores))
        ]  # fmt: skip
        captions = [f"{k + 1} {box_caption(name, float(score))}" for k, (name, score) in enumerate(zip(names, scores))]
        resized = det.resize(self.loaded.model, photo)
        at = (resized.image_sizes[0][1], resized.image_sizes[0][0])
        predictions = [{"class": d["class"], "name": f"{d['number']}: {d['name']}", "probability": d["score"]} for d in detections]
        return Explained(
            index=item.index,
            name=item.name,
            image=str(item.path),
            size=tuple(item.photo.size),
            maps={"combined": maps[0], **{f"det{k}": maps[k] for k in range(1, len(maps))}},
            predictions=predictions,
            target={"class": None, "name": f"{len(detections)} detection(s) ≥ {self.min_score:g}", "probability": detections[0]["score"]},
            predicted_at=at,
            explained_at=at,
            label=item.label,
            photo=draw_boxes(item.photo, boxes.tolist(), captions),
            detections=detections,
        )

    def _maps(self, photo: Tensor, boxes: Tensor, labels: Tensor) -> list[Any]:
        """(H, W) float32 arrays: the map of all ``boxes`` then of each, ``batch_size`` copies of the photo per pass."""
        specs = [None, *range(len(boxes))]  # None: all of them
        planes: list[Any] = []
        for start in range(0, len(specs), self.batch_size):
            chunk = specs[start : start + self.batch_size]
            copies = photo.expand(len(chunk), -1, -1, -1).contiguous()
            target = _Chosen(boxes, labels, chunk)
            if self.method is not None and self.method.pair is None:
                maps = det.gradcam(self.loaded.model, copies, target, layers=self.layers)
            else:
                extract, aggregate = self.method.pair if self.method is not None else ("conv1x1", "norm")
                maps = det.saliency(self.loaded.model, copies, target, layers=self.layers, extract=extract, aggregate=aggregate)
            each, every = maps.combined(self.combine), maps.combined(ALL_COMBINE) if None in chunk else None
            combined = torch.stack([(every if spec is None else each)[k] for k, spec in enumerate(chunk)])
            if not bool(torch.isfinite(combined).all()):
                raise NormGradError("a detection's map is NaN or infinite (the model's output is not finite for this photo)")
            planes += [combined[k, 0].cpu().numpy() for k in range(len(chunk))]
        return planes


def _ready(explained: Any) -> Any:
    return explained


@dataclass(frozen=True)
class _Chosen:
    """Per copy of the photo: the sum of the scores of all ``boxes`` (``None``), or the score of box ``k``."""

    boxes: Tensor
    labels: Tensor
    chosen: list[int | None]

    def __call__(self, output: Any) -> Tensor:
        every = det.DetectionScore(self.boxes, self.labels, MATCH_IOU)
        scores = []
        for item, k in zip(det.detections_of(output), self.chosen):
            if k is None:
                scores.append(every([item] * len(self.boxes)).sum())
            else:
                scores.append(det.DetectionScore(self.boxes[k], self.labels[k : k + 1], MATCH_IOU)([item])[0])
        return torch.stack(scores)


__all__ = ["DetectLoop", "check_detector_model", "check_task", "files_of", "layers_of", "refuse_detector", "settings"]
