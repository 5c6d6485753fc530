"""The grid pointing game (Böhle et al.; Rao et al. 2022) on real photos.

2×2 grids of photos of different, confidently classified classes; for each
cell's class, the share of positive saliency inside that cell (chance: 25 %)
and whether the argmax falls in it.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import torch

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
