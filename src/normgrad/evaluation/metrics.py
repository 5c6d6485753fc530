"""Map comparison metrics (scipy and scikit-image)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from normgrad.viz import as_plane


def plane(saliency_map: Tensor | np.ndarray) -> np.ndarray:
    """One map as a float64 (h, w) array."""
    return as_plane(saliency_map, np.float64)


def spearman(a: Tensor | np.ndarray, b: Tensor | np.ndarray, absolute: bool = False) -> float:
    """Spearman rank correlation ρ between two maps of one image (the correlation, not its p-value).

    ``absolute=True`` compares ``|a|`` and ``|b|``.  A constant map gives ``nan``.
    """
    from scipy.stats import spearmanr

    x, y = plane(a).ravel(), plane(b).ravel()
    if absolute:
        x, y = np.abs(x), np.abs(y)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def ssim(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Structural similarity of two maps, each min-max normalised to [0, 1] first (nan below 3×3)."""
    from skimage.metrics import structural_similarity

    x, y = (_min_max(plane(m)) for m in (a, b))
    side = min(x.shape)
    if side < 3:
        return float("nan")
    window = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(x, y, data_range=1.0, win_size=window))


def _min_max(array: np.ndarray) -> np.ndarray:
    return (array - array.min()) / max(float(array.max() - array.min()), 1e-12)
