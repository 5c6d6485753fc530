"""The grid pointing game (Böhle et al.; Rao et al. 2022) on real photos.

Grids of photos of different, confidently classified classes (2×2, 3×3,
cells of equal or mixed sizes); for each cell's class as the target, on the
map at the grid's full resolution:

=========  ==========================================================  =====================
metric     definition                                                  chance (n cells)
=========  ==========================================================  =====================
``hit``    the map's (first) argmax lies in the target's cell          cell area / grid area
``mass``   ``Σ_cell max(s, 0) / Σ_grid max(s, 0)`` (float64 sums)      cell area / grid area
=========  ==========================================================  =====================

Means come with 95 % bootstrap intervals that resample *photos* (all the
records whose target is a photo move together), not cells: a photo recurs in
several grids, and photos, not cells, are what a new benchmark would change.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from normgrad.errors import NormGradError
from normgrad.evaluation.common import maps_at
from normgrad.evaluation.photos import confident


def square(photo: Any, side: int) -> Any:
    """Centre crop to a square, resized to ``side``."""
    from PIL import Image

    width, height = photo.size
    edge = min(width, height)
    left, top = (width - edge) // 2, (height - edge) // 2
    return photo.crop((left, top, left + edge, top + edge)).resize((side, side), Image.Resampling.BICUBIC)


def make_grids(photos: list[tuple[str, Any, int]], cell: int, max_grids: int) -> list[tuple[Any, list[str], list[int]]]:
    """2×2 grids (image, names, classes) from every 4-subset, each also rotated by one cell."""
    from PIL import Image

    grids = []
    for subset in itertools.combinations(photos, 4):
        for shift in (0, 1):
            arranged = list(subset[shift:]) + list(subset[:shift])
            canvas = Image.new("RGB", (2 * cell, 2 * cell))
            for k, (_, photo, _) in enumerate(arranged):
                canvas.paste(square(photo, cell), ((k % 2) * cell, (k // 2) * cell))
            grids.append((canvas, [a[0] for a in arranged], [a[2] for a in arranged]))
            if len(grids) >= max_grids:
                return grids
    return grids


def grid_pointing(
    loaded: Any, photos: dict[str, Any], methods: list, *, cell: int = 224, threshold: float = 0.2, max_grids: int = 10
) -> list[dict]:
    """One record per (grid, cell, method, layer): ``share`` of positive mass in the cell, ``hit``."""
    chosen = confident(loaded, photos, threshold)
    if len(chosen) < 4:
        found = ", ".join(f"{n} ({loaded.class_name(c)} {p:.0%})" for n, (_, c, p) in chosen.items()) or "none"
        raise NormGradError(f"the grid pointing game needs 4 photos of different classes with p ≥ {threshold:.0%}; found {found}")
    grids = make_grids([(name, photo, cls) for name, (photo, cls, _) in chosen.items()], cell, max_grids)
    preprocess = replace(loaded.preprocess, size=2 * cell, square=True)
    example = preprocess(grids[0][0])[None]
    layers = loaded.default_layers(example)
    records = []
    for g, (canvas, names, classes) in enumerate(grids):
        x = preprocess(canvas)[None].expand(4, -1, -1, -1)
        for method in methods:
            maps = maps_at(method, loaded, x, torch.tensor(classes), layers, (2 * cell, 2 * cell))
            for layer, batch in maps.items():
                for k in range(4):
                    positive = batch[k, 0].double().clamp_min(0)  # float64 sums: a share of exactly 1 stays 1
                    top, left = (k // 2) * cell, (k % 2) * cell
                    inside = positive[top : top + cell, left : left + cell].sum()
                    total = positive.sum()
                    row, col = divmod(int(batch[k, 0].flatten().argmax()), 2 * cell)
                    records.append(
                        {
                            "grid": g,
                            "cell": k,
                            "photo": names[k],
                            "method": method.name,
                            "layer": layer,
                            "share": float(inside / total) if total > 0 else 0.25,
                            "hit": row // cell == k // 2 and col // cell == k % 2,
                        }
                    )
    return records


# ----------------------------------------------------------------------------- grids of any layout


@dataclass(frozen=True)
class Grid:
    """A grid image, and per cell its box ``(top, left, bottom, right)`` (exclusive ends), photo name and class."""

    image: Any
    boxes: tuple[tuple[int, int, int, int], ...]
    names: tuple[str, ...]
    classes: tuple[int, ...]


def make_grid(photos: Sequence[Any], widths: Sequence[int], heights: Sequence[int], names=(), classes=()) -> Grid:
    """Photos laid row by row into ``len(heights) × len(widths)`` cells, each centre-cropped to its cell's shape and resized."""
    from PIL import Image, ImageOps

    if len(photos) != len(widths) * len(heights):
        raise NormGradError(f"a {len(heights)}×{len(widths)} grid needs {len(widths) * len(heights)} photos; got {len(photos)}")
    lefts, tops = np.cumsum([0, *widths]), np.cumsum([0, *heights])
    canvas = Image.new("RGB", (int(lefts[-1]), int(tops[-1])))
    boxes = []
    for k, photo in enumerate(photos):
        row, col = divmod(k, len(widths))
        canvas.paste(ImageOps.fit(photo, (widths[col], heights[row]), Image.Resampling.BICUBIC), (int(lefts[col]), int(tops[row])))
        boxes.append((int(tops[row]), int(lefts[col]), int(tops[row + 1]), int(lefts[col + 1])))
    return Grid(canvas, tuple(boxes), tuple(names), tuple(classes))


def cell_scores(saliency_map: Tensor, box: tuple[int, int, int, int]) -> tuple[bool, float]:
    """``(hit, mass)`` of an (H, W) map for the cell ``box``; a map without positive mass scores the cell's area share."""
    if saliency_map.dim() != 2:
        raise NormGradError(f"cell_scores takes one (H, W) map; got shape {tuple(saliency_map.shape)}")
    top, left, bottom, right = box
    height, width = saliency_map.shape
    row, col = divmod(int(saliency_map.flatten().argmax()), width)
    positive = saliency_map.double().clamp_min(0)
    total = float(positive.sum())
    mass = float(positive[top:bottom, left:right].sum()) / total if total > 0 else (bottom - top) * (right - left) / (height * width)
    return top <= row < bottom and left <= col < right, mass


def cell_records(spec: dict, grid: Any, full: Tensor, candidate: str, *, chance: bool = False, **extra: Any) -> list[dict]:
    """One record per cell of a benchmark grid (``spec``: its id, layout and photo names): the :func:`cell_scores` of
    cell ``k``'s target map ``full[k, 0]`` (``full``: (cells, 1, H, W) at the grid's size), with the cell's area share
    as ``chance`` if asked, then ``extra``."""
    width, height = grid.image.size
    records = []
    for k, box in enumerate(grid.boxes):
        hit, mass = cell_scores(full[k, 0], box)
        record = {"grid": spec["id"], "layout": spec["layout"], "cell": k, "photo": spec["names"][k], "candidate": candidate,
                  "hit": hit, "mass": mass}  # fmt: skip
        if chance:
            record["chance"] = (box[2] - box[0]) * (box[3] - box[1]) / (width * height)
        records.append(record | extra)
    return records


@dataclass(frozen=True)
class Layout:
    """A family of grids: ``rows × cols`` cells, each column width and row height drawn from ``sizes``; ``kinds``: photo kinds allowed."""

    name: str
    rows: int
    cols: int
    sizes: tuple[int, ...] = (224,)
    kinds: tuple[str, ...] = ("scene", "cutout")


LAYOUTS = (
    Layout("2x2", 2, 2),
    Layout("2x2 scenes", 2, 2, kinds=("scene",)),
    Layout("2x2 mixed", 2, 2, (160, 224, 288, 352)),
    Layout("3x3", 3, 3),
    Layout("3x3 mixed", 3, 3, (128, 192, 256)),
)


def benchmark_grids(photos: list[dict], counts: dict[str, int], seed: int = 0) -> list[dict]:
    """Grid specifications ``{id, layout, widths, heights, names, classes}`` over ``photos`` (records with ``name, kind, class``).

    Each grid holds photos of different classes; photos are drawn least-used
    first (ties at random), so every photo is a target about equally often.
    """
    rng = random.Random(seed)
    used = {p["name"]: 0 for p in photos}
    specs = []
    for layout in LAYOUTS:
        pool = [p for p in photos if p["kind"] in layout.kinds]
        for index in range(counts.get(layout.name, 0)):
            order = sorted(pool, key=lambda p: (used[p["name"]], rng.random()))
            chosen, classes = [], set()
            for p in order:
                if p["class"] not in classes:
                    chosen.append(p)
                    classes.add(p["class"])
                if len(chosen) == layout.rows * layout.cols:
                    break
            if len(chosen) < layout.rows * layout.cols:
                raise NormGradError(
                    f"layout {layout.name} needs {layout.rows * layout.cols} photos of different classes; have {len(classes)}"
                )
            rng.shuffle(chosen)
            for p in chosen:
                used[p["name"]] += 1
            specs.append(
                {
                    "id": f"{layout.name.replace(' ', '-')}-{index:03d}",
                    "layout": layout.name,
                    "widths": [rng.choice(layout.sizes) for _ in range(layout.cols)],
                    "heights": [rng.choice(layout.sizes) for _ in range(layout.rows)],
                    "names": [p["name"] for p in chosen],
                    "classes": [p["class"] for p in chosen],
                }
            )
    return specs


def bootstrap_mean(values: Sequence[float], clusters: Sequence[Any], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and its 95 % percentile bootstrap interval, resampling whole ``clusters`` (e.g. photos).

    A resample draws as many clusters as there are, with replacement, and takes
    the mean of all their records: ``Σ_k sum_k / Σ_k count_k`` over the drawn clusters.
    Pass paired differences as ``values`` to compare two methods.
    """
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or len(clusters) != values.size:
        raise NormGradError(f"bootstrap_mean needs one cluster per value; got {values.size} values, {len(clusters)} clusters")
    keys, index = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=len(keys))
    counts = np.bincount(index, minlength=len(keys)).astype(np.float64)
    mean = float(sums.sum() / counts.sum())
    if len(keys) < 2 or np.ptp(values) == 0:  # nothing varies: the interval is the point
        return mean, mean, mean
    result = bootstrap(
        (sums, counts),
        lambda s, c, axis=-1: s.sum(axis) / c.sum(axis),
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)
