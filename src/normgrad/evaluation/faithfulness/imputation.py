"""ROAD's noisy linear imputation (Rong et al., ICML 2022): removed pixels become the weighted mean of their neighbours.

Each removed pixel ``u`` of an image (un-normalised pixel values) is an
unknown ``x_u`` of one sparse linear system,

    Σ_{n ∈ N(u)} w_n · (x_u − x_n) = 0,   i.e.   x_u = Σ_n w_n x_n / Σ_n w_n,

over its 8 neighbours ``N(u)`` inside the image (neighbours outside are
dropped, and their weight with them): ``w = 1/6`` for the 4 edge neighbours
and ``1/12`` for the 4 diagonal ones.  A neighbour that is itself removed is
another unknown of the same system; a known neighbour moves to the right-hand
side.  The system is solved once per image with
``scipy.sparse.linalg.spsolve``, one right-hand side per channel, then
Gaussian noise ``σ = noise`` (0.01 by default, in the pixels' own units) is
added to the imputed values only.

Why it is well posed: every connected group of removed pixels that is not
the whole image touches a known pixel, so the matrix is irreducibly
diagonally dominant, hence invertible.  An image with *no* known pixel has
no unique solution (any constant solves it); :func:`linear_imputation`
then gives every pixel the image's per-channel mean (its documented
convention, used by insertion's first step on the ROAD substrate).
Why it matters: a removed region filled by its surroundings carries no trace
of its shape, so a classifier cannot read the class off the mask (the leak
that mean-filling shows; Rong et al. 2022, §3).

A constant image imputes to the same constant (each equation's weights sum
to their own total); the imputation commutes with a per-channel affine map
``a·x + b`` (normalisation), so only the noise depends on the pixel units.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import spsolve
from torch import Tensor

from normgrad.errors import NormGradError

EDGE, DIAGONAL = 1 / 6, 1 / 12
NEIGHBOURS = (
    ((-1, 0), EDGE), ((1, 0), EDGE), ((0, -1), EDGE), ((0, 1), EDGE),
    ((-1, -1), DIAGONAL), ((-1, 1), DIAGONAL), ((1, -1), DIAGONAL), ((1, 1), DIAGONAL),
)  # fmt: skip
NOISE = 0.01


def linear_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The noise-free imputation of one image: ``image`` (C, H, W) float, ``removed`` (H, W) bool → (C, H, W) float64.

    Known pixels are returned unchanged; removed ones solve the module's system.
    """
    image = np.asarray(image, dtype=np.float64)
    removed = np.asarray(removed, dtype=bool)
    if image.ndim != 3 or removed.shape != image.shape[1:]:
        raise NormGradError(f"expected an image (C, H, W) and a mask (H, W); got {image.shape} and {removed.shape}")
    out = image.copy()
    count = int(removed.sum())
    if count == 0:
        return out
    if count == removed.size:  # nothing known: any constant solves the system; the convention is the image's mean
        out[:] = image.mean(axis=(1, 2), keepdims=True)
        return out
    height, width = removed.shape
    rows, cols = np.nonzero(removed)
    unknown = np.full(removed.shape, -1, dtype=np.int64)
    unknown[rows, cols] = np.arange(count)
    diagonal = np.zeros(count)
    rhs = np.zeros((count, image.shape[0]))
    entries_row, entries_col, entries = [], [], []
    for (dy, dx), weight in NEIGHBOURS:
        ny, nx = rows + dy, cols + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        equation, ny, nx = np.nonzero(inside)[0], ny[inside], nx[inside]
        diagonal[equation] += weight
        other = unknown[ny, nx]
        is_unknown = other >= 0
        entries_row.append(equation[is_unknown])
        entries_col.append(other[is_unknown])
        entries.append(np.full(int(is_unknown.sum()), -weight))
        known = ~is_unknown
        rhs[equation[known]] += weight * image[:, ny[known], nx[known]].T
    matrix = csc_matrix(
        (
            np.concatenate([diagonal, *entries]),
            (np.concatenate([np.arange(count), *entries_row]), np.concatenate([np.arange(count), *entries_col])),
        ),
        shape=(count, count),
    )
    solution = spsolve(matrix, rhs).reshape(count, image.shape[0])  # one solve, a right-hand side per channel
    out[:, rows, cols] = solution.T
    return out


def noisy_linear_imputation(
    pixels: Tensor, removed: Tensor, *, noise: float = NOISE, generator: np.random.Generator | None = None
) -> Tensor:
    """ROAD's imputation of a batch: ``pixels`` (N, C, H, W) un-normalised, ``removed`` (N, 1, H, W) bool → same shape and dtype.

    Noise ``N(0, noise²)`` is added to the imputed pixels (each channel its own
    draw) from ``generator`` (default: a fresh, unseeded one).
    """
    if pixels.dim() != 4 or removed.shape != (pixels.shape[0], 1, *pixels.shape[2:]) or removed.dtype != torch.bool:
        raise NormGradError(f"expected pixels (N, C, H, W) and a bool mask (N, 1, H, W); got {tuple(pixels.shape)}, {tuple(removed.shape)}")
    if not (noise >= 0 and np.isfinite(noise)):
        raise NormGradError(f"the imputation noise must be a finite number ≥ 0; got {noise}")
    generator = generator or np.random.default_rng()
    source = pixels.detach().cpu().double().numpy()
    masks = removed[:, 0].cpu().numpy()
    out = np.empty_like(source)
    for i, (image, mask) in enumerate(zip(source, masks)):
        out[i] = linear_imputation(image, mask)
        if noise > 0:
            out[i][:, mask] += noise * generator.standard_normal((image.shape[0], int(mask.sum())))
    return torch.from_numpy(out).to(device=pixels.device, dtype=pixels.dtype)


def impute_seeded(pixels: Tensor, removed: Tensor, seeds: list[list[int]], noise: float = NOISE) -> Tensor:
    """:func:`noisy_linear_imputation` of each image with its own noise ``np.random.default_rng(seeds[i])``.

    Per-image seeds make a batch equal its items, and two methods that remove
    the same pixels of an image see the same noise (paired comparisons).
    """
    if len(seeds) != len(pixels):
        raise NormGradError(f"one seed per image: {len(pixels)} images, {len(seeds)} seeds")
    parts = [
        noisy_linear_imputation(pixels[i : i + 1], removed[i : i + 1], noise=noise, generator=np.random.default_rng(seed))
        for i, seed in enumerate(seeds)
    ]
    return torch.cat(parts) if parts else pixels.clone()
