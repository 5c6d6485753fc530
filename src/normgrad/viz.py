"""Figures: a map blended over its image, and grids of maps (matplotlib, Pillow).

Maps are (H, W) arrays or (1, 1, H, W) / (1, H, W) tensors; they are
min-max normalised for display and resized to the image if needed.

:func:`overlay` is on ``normgrad explain``'s hot path, so it needs no
matplotlib: colours come from a 256-entry uint8 lookup table, built exactly
as matplotlib samples a colormap (``jet`` from its segment data here, any
other name from matplotlib once), and the blend is integer arithmetic when
``alpha = 0.5``.  The pixels equal matplotlib's ``colormaps[cmap]`` followed
by the float blend (tested).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

COLOURS = 256  # matplotlib's default colormap resolution
# matplotlib's "jet" (matplotlib/_cm.py): per channel, (x, value) points of a piecewise linear function of [0, 1]
_JET = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}


def as_plane(saliency_map: Any, dtype: Any = np.float32) -> np.ndarray:
    """One map (tensor or array, leading singleton dimensions allowed) as an (h, w) numpy array."""
    if isinstance(saliency_map, Tensor):
        saliency_map = saliency_map.detach().float().cpu().numpy()
    array = np.asarray(saliency_map, dtype=dtype)
    while array.ndim > 2:
        array = array[0]
    return array


def _resized(array: np.ndarray, width: int, height: int) -> np.ndarray:
    if array.shape == (height, width):
        return array
    from PIL import Image

    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR))


def _segment_table(points: tuple[tuple[float, float], ...], n: int = COLOURS) -> np.ndarray:
    """A piecewise linear channel sampled at ``n`` points, as matplotlib's ``_create_lookup_table`` does (continuous segments)."""
    x = np.array([p[0] for p in points]) * (n - 1)
    y = np.array([p[1] for p in points])
    samples = (n - 1) * np.linspace(0, 1, n)
    ind = np.searchsorted(x, samples)[1:-1]
    distance = (samples[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
    return np.clip(np.concatenate([[y[0]], distance * (y[ind] - y[ind - 1]) + y[ind - 1], [y[-1]]]), 0.0, 1.0)


@lru_cache(maxsize=16)
def colour_table(cmap: str = "jet") -> np.ndarray:
    """The (256, 3) uint8 colours of a colormap: entry ``i`` is ``(colormaps[cmap](i / 256)[:3] * 255).astype(uint8)``."""
    if cmap == "jet":
        rgb = np.stack([_segment_table(_JET[channel]) for channel in ("red", "green", "blue")], axis=1)
    else:
        from matplotlib import colormaps

        rgb = colormaps[cmap].resampled(COLOURS)(np.arange(COLOURS))[:, :3]
    table = (rgb * 255).astype(np.uint8)
    table.flags.writeable = False
    return table


def colour_indices(normalised: np.ndarray) -> np.ndarray:
    """Table indices of values in [0, 1], as matplotlib's colormap call computes them: ``int(x · 256)``, 1.0 → 255."""
    scaled = np.multiply(normalised, COLOURS, dtype=normalised.dtype)
    scaled[scaled == COLOURS] = COLOURS - 1
    return np.clip(scaled, 0, COLOURS - 1).astype(np.intp)


def colorize(saliency_map: Any, cmap: str = "jet") -> np.ndarray:
    """(H, W) map → (H, W, 3) uint8 colours, normalised to [0, 1] first (a lookup table; no matplotlib for ``jet``).

    NaN values are black, as matplotlib draws them.
    """
    return np.asarray(colour_image(saliency_map, cmap))


def colour_image(saliency_map: Any, cmap: str = "jet") -> Any:
    """:func:`colorize` as an RGB ``PIL.Image``: the table indices as a palette image, expanded by Pillow (in C)."""
    from PIL import Image

    plane = as_plane(saliency_map)
    low, high = float(plane.min()), float(plane.max())
    normalised = (plane - low) / max(high - low, 1e-12)
    if math.isfinite(low) and math.isfinite(high):
        normalised *= np.float32(COLOURS)  # colour_indices' arithmetic, as uint8 levels: int(x · 256), 1.0 → 255
        return palette_image(np.clip(normalised, 0, COLOURS - 1, out=normalised).astype(np.uint8), cmap)
    bad = np.isnan(normalised)
    colours = colour_table(cmap)[colour_indices(np.where(bad, 0, normalised))]
    colours[bad] = 0
    return Image.fromarray(colours)


def palette_image(levels: np.ndarray, cmap: str = "jet") -> Any:
    """(H, W) uint8 table indices → an RGB ``PIL.Image`` of the colormap's colours (a palette image expanded in C)."""
    from PIL import Image

    image = Image.fromarray(levels, "L")
    image.putpalette(colour_table(cmap).tobytes())
    return image.convert("RGB")


def overlay_array(base: np.ndarray, saliency_map: Any, *, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """The blend ``(1 − alpha)·base + alpha·colours`` of an (H, W, 3) uint8 image and a map, truncated to uint8.

    ``alpha = 0.5`` is exact in integers: ``(base + colours) >> 1``; other
    values blend in float32 as before.
    """
    from PIL import Image

    return np.asarray(overlay(Image.fromarray(np.ascontiguousarray(base, dtype=np.uint8)), saliency_map, cmap=cmap, alpha=alpha))


def overlay(image: Any, saliency_map: Any, *, cmap: str = "jet", alpha: float = 0.5) -> Any:
    """The map blended over the image, at the image's own pixel size (a ``PIL.Image``): see :func:`overlay_array`."""
    from PIL import Image, ImageChops

    base = image if image.mode == "RGB" else image.convert("RGB")
    colours = colour_image(_resized(as_plane(saliency_map), *base.size), cmap)
    if alpha == 0.5:
        return ImageChops.add(base, colours, scale=2.0)  # (base + colours) // 2 per channel, in C
    mixed = (1 - alpha) * np.asarray(base, dtype=np.float32) + alpha * np.asarray(colours, dtype=np.float32)
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colorbar(fig: Any, ax: Any, cmap: str) -> None:
    """A colorbar for the normalised map's colormap (an RGB overlay carries no colormap of its own)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=cmap), ax=ax, fraction=0.046, label="saliency (normalised)")


def _finish(fig: Any, path: str | Path | None) -> Any:
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def overlay_figure(
    image: Any,
    saliency_map: Any,
    *,
    cmap: str = "jet",
    alpha: float = 0.5,
    colorbar: bool = True,
    title: str = "",
    path: str | Path | None = None,
) -> Any:
    """The overlay as a matplotlib figure, with an optional colorbar (map values, min-max normalised) and title."""
    width, height = image.size
    fig, ax = _pyplot().subplots(figsize=(5 * width / max(width, height) + (1 if colorbar else 0), 5 * height / max(width, height)))
    ax.imshow(overlay(image, saliency_map, cmap=cmap, alpha=alpha))
    ax.set_axis_off()
    if colorbar:
        _colorbar(fig, ax, cmap)
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(fig, path)


def grid(
    image: Any,
    panels: dict[str, dict[str, Any]],
    *,
    title: str = "",
    cmap: str = "jet",
    alpha: float = 0.5,
    colorbar: bool = False,
    path: str | Path | None = None,
) -> Any:
    """A grid figure: rows are the outer keys (layers), columns the inner keys (methods).

    ``panels[row][column]`` is a map; the first column shows the image.
    Returns the matplotlib figure (saved to ``path`` if given).
    """
    rows = list(panels)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in panels[row] if c not in columns]
    aspect = image.size[1] / image.size[0]
    fig, axes = _pyplot().subplots(
        len(rows), len(columns) + 1, figsize=(2.2 * (len(columns) + 1), 2.2 * aspect * len(rows) + 0.6), squeeze=False
    )
    for r, row in enumerate(rows):
        axes[r, 0].imshow(image)
        axes[r, 0].set_ylabel(row, fontsize=9)
        for c, column in enumerate(columns, start=1):
            ax = axes[r, c]
            if column in panels[row]:
                ax.imshow(overlay(image, panels[row][column], cmap=cmap, alpha=alpha))
                if colorbar:
                    _colorbar(fig, ax, cmap)
            else:  # e.g. an input-level method has no per-layer maps
                ax.set_frame_on(False)
            if r == 0:
                ax.set_title(column, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return _finish(fig, path)
