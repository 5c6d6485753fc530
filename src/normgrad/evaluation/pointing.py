"""The pointing game (Zhang et al. 2016), as run by TorchRay.

For each (image, class present) pair: the saliency map for that class at the
original image resolution, its first argmax point; a *hit* if a ground-truth
pixel of the class lies at Euclidean distance strictly below ``tolerance``
(15 px) of it.  Accuracy is the mean over classes of hits / (hits + misses),
over classes with at least one evaluated pair.  The *difficult* subset keeps
pairs whose class covers less than 1/4 of the image while another class is
present (or TorchRay's per-image flags).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from normgrad.errors import NormGradError
from normgrad.evaluation.datasets import AnnotatedImage


def first_argmax(saliency_map: np.ndarray) -> tuple[int, int]:
    """(row, col) of the first maximum in row-major order."""
    row, col = np.unravel_index(int(np.argmax(saliency_map)), saliency_map.shape)
    return int(row), int(col)


def is_hit(mask: np.ndarray, point: tuple[int, int], tolerance: float) -> bool:
    """Whether a ground-truth pixel lies at distance < ``tolerance`` of ``point``."""
    row, col = point
    reach = int(np.ceil(tolerance))
    top, left = max(row - reach, 0), max(col - reach, 0)
    rows, cols = np.nonzero(mask[top : row + reach + 1, left : col + reach + 1])
    return bool(np.any((rows + top - row) ** 2 + (cols + left - col) ** 2 < tolerance**2))


class PointingGame:
    """Per-class hit/miss counts and the class-mean accuracy."""

    def __init__(self, class_names: tuple[str, ...] | list[str], tolerance: float = 15.0) -> None:
        if tolerance <= 0:
            raise NormGradError(f"tolerance must be positive; got {tolerance}")
        self.class_names, self.tolerance = list(class_names), tolerance
        self.hits = np.zeros(len(class_names), dtype=int)
        self.misses = np.zeros(len(class_names), dtype=int)

    def add(self, cls: int, hit: bool) -> None:
        (self.hits if hit else self.misses)[cls] += 1

    def evaluate(self, cls: int, mask: np.ndarray, saliency_map: np.ndarray) -> bool:
        if saliency_map.shape != mask.shape:
            raise NormGradError(f"map {saliency_map.shape} and ground truth {mask.shape} differ: maps must be at the original resolution")
        hit = is_hit(mask, first_argmax(saliency_map), self.tolerance)
        self.add(cls, hit)
        return hit

    @property
    def per_class(self) -> dict[str, float | None]:
        total = self.hits + self.misses
        return {name: (float(h / t) if t else None) for name, h, t in zip(self.class_names, self.hits, total)}

    @property
    def accuracy(self) -> float:
        values = [v for v in self.per_class.values() if v is not None]
        return float(np.mean(values)) if values else float("nan")

    def result(self) -> dict[str, Any]:
        """Strict-JSON results (accuracy ``None`` when no pair was evaluated)."""
        return {
            "accuracy": None if np.isnan(self.accuracy) else self.accuracy,
            "per_class": self.per_class,
            "hits": dict(zip(self.class_names, self.hits.tolist())),
            "misses": dict(zip(self.class_names, self.misses.tolist())),
            "pairs": int(self.hits.sum() + self.misses.sum()),
            "tolerance": self.tolerance,
        }


MapsFn = Callable[[AnnotatedImage, list[int]], np.ndarray]  # -> (K, H, W) maps, one per class


def run_pointing_game(
    dataset: Any,
    maps_for: MapsFn,
    *,
    tolerance: float = 15.0,
    subset: str = "all",
    difficult_flags: dict[str, list[int]] | None = None,
    limit: int | None = None,
    progress: Callable[[Any], Any] = iter,
    resume_file: Path | None = None,
    settings: dict | None = None,
    restart: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Play the game over a dataset; ``maps_for(image, classes)`` gives the maps at the original size.

    With ``resume_file`` each finished image is appended to it (JSON lines,
    :class:`normgrad.store.JsonLines`) and images already there are not
    recomputed; the file is locked while the game runs.  ``settings`` are
    written as its first line and must match when resuming; ``restart``
    discards what it holds.
    """
    if subset not in ("all", "difficult"):
        raise NormGradError(f"unknown subset {subset!r}; valid: all, difficult")
    game = PointingGame(dataset.class_names, tolerance)
    ids = dataset.ids[:limit] if limit else dataset.ids
    with _resume_log(resume_file, settings, restart, log) as (done, resume):
        for image_id in progress(ids):
            if image_id in done:
                for cls, hit in done[image_id]:
                    game.add(cls, hit)
                continue
            image = dataset.load(image_id)
            classes = [c for c in image.classes if subset == "all" or _difficult(image, c, difficult_flags)]
            outcomes = []
            if classes:
                maps = maps_for(image, classes)
                for cls, saliency_map in zip(classes, maps):
                    outcomes.append((cls, game.evaluate(cls, image.mask(cls), saliency_map)))
            if resume is not None:
                resume.append({"image": image_id, "pairs": outcomes})
    return {"subset": subset, "images": len(ids), **game.result()}


@contextmanager
def _resume_log(path: Path | None, settings: dict | None, restart: bool, log: Callable[[str], None]) -> Iterator[tuple[dict, Any]]:
    """The finished images of a resume file and the file to append to, locked against a second run."""
    if path is None:
        yield {}, None
        return
    import fcntl

    from normgrad.store import JsonLines

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise NormGradError(f"another run is writing {path}; wait for it or choose another --out") from None
        if restart:
            os.ftruncate(fd, 0)
        lines = JsonLines(path).read()
        header = {"settings": settings}
        if lines and settings is not None and lines[0].get("settings") != settings:
            raise NormGradError(f"{path} holds results of other settings than this run's; pass --overwrite to start afresh")
        done = {r["image"]: [(int(c), bool(h)) for c, h in r["pairs"]] for r in lines if "image" in r and "pairs" in r}
        if done:
            log(f"resuming from {path}: {len(done)} image(s) done")
        with JsonLines(path) as resume:
            if not lines and settings is not None:
                resume.append(header)
            yield done, resume
    finally:
        os.close(fd)


def _difficult(image: AnnotatedImage, cls: int, flags: dict[str, list[int]] | None) -> bool:
    if flags is None:
        return image.is_difficult(cls)
    if image.image_id not in flags:
        raise NormGradError(f"difficult flags have no line for image {image.image_id}")
    return bool(flags[image.image_id][cls])


def method_maps(loaded: Any, method: Any, layers: list[str] | None, combine: str = "product", device: str = "cpu") -> MapsFn:
    """``maps_for(image, classes)`` for a registry method: one batched pass per image (one sample per class).

    Maps at the original size (:func:`normgrad.pipeline.at_image_size`): one
    map as it is, several combined with ``combine``; model-free methods
    (centre, random) are defined on the original image.
    """
    import torch

    from normgrad import pipeline
    from normgrad.images import load_image

    def maps_for(image: AnnotatedImage, classes: list[int]) -> np.ndarray:
        size = (image.height, image.width)
        maps = None
        if method.needs_model:
            x = pipeline.prepare(load_image(image.path), loaded.preprocess)[None].expand(len(classes), -1, -1, -1).to(device)
            maps = pipeline.run_method(method, loaded.model, x, torch.tensor(classes, device=device), layers)
        at_size = pipeline.at_image_size(method, maps, size, combine, count=len(classes), one_as_is=True)
        return at_size[pipeline.COMBINED][:, 0].numpy()

    return maps_for
