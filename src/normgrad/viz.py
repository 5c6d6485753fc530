"""Figures: a map blended over its image, and grids of maps (matplotlib, Pillow).

Maps are (H, W) arrays or (1, 1, H, W) / (1, H, W) tensors; they are
min-max normalised for display and resized to the image if needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor


def as_plane(saliency_map: Any, dtype: Any = np.float32) -> np.ndarray:
    """One map (tensor or array, leading singleton dimensions allowed) as an (h, w) numpy array."""
    if isinstance(saliency_map, Tensor):
        saliency_map = saliency_map.detach().float().cpu().numpy()
    array = np.asarray(saliency_map, dtype=dtype)
    while array.ndim > 2:
        array = array[0]
    return array


def _normalised(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    return (array - low) / max(high - low, 1e-12)


def _resized(array: np.ndarray, width: int, height: int) -> np.ndarray:
    if array.shape == (height, width):
        return array
    from PIL import Image

    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR))


def colorize(saliency_map: Any, cmap: str = "jet") -> np.ndarray:
    """(H, W) map → (H, W, 3) uint8 colours, normalised to [0, 1] first."""
    from matplotlib import colormaps

    rgba = colormaps[cmap](_normalised(as_plane(saliency_map)))
    return (rgba[..., :3] * 255).astype(np.uint8)


def overlay(image: Any, saliency_map: Any, *, cmap: str = "jet", alpha: float = 0.5) -> Any:
    """The map blended over the image, at the image's own pixel size (a ``PIL.Image``)."""
    from PIL import Image

    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = base.shape[:2]
    colours = colorize(_resized(as_plane(saliency_map), width, height), cmap).astype(np.float32)
    blended = (1 - alpha) * base + alpha * colours
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


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
