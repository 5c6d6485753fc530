"""The overlay's lookup-table colours and integer blend equal matplotlib's colormap and the float blend, pixel for pixel."""

import numpy as np
import pytest
import torch
from PIL import Image

from normgrad import viz


def matplotlib_colours(plane: np.ndarray, cmap: str) -> np.ndarray:
    """The reference: min-max normalise, matplotlib's colormap, first three channels × 255 truncated."""
    from matplotlib import colormaps

    low, high = float(plane.min()), float(plane.max())
    return (colormaps[cmap]((plane - low) / max(high - low, 1e-12))[..., :3] * 255).astype(np.uint8)


def maps() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 1, 7, 9), size=(61, 83), mode="bilinear")[0, 0].numpy()
    steps = (np.arange(256 * 4, dtype=np.float32) / (256 * 4 - 1)).reshape(32, 32)  # every table entry and its edges
    return [smooth, rng.random((40, 50), dtype=np.float32), steps, -steps, np.zeros((5, 6), np.float32), rng.standard_normal((9, 9))]


@pytest.mark.parametrize("cmap", ["jet", "viridis", "gray"])
def test_colours_equal_matplotlib(cmap):
    for plane in maps():
        assert np.array_equal(viz.colorize(plane, cmap), matplotlib_colours(np.asarray(plane, np.float32), cmap))


def test_jet_table_is_built_without_matplotlib():
    from matplotlib import colormaps

    expected = (colormaps["jet"](np.arange(256))[:, :3] * 255).astype(np.uint8)
    assert np.array_equal(viz.colour_table("jet"), expected)


def test_nan_is_black_as_in_matplotlib():
    plane = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    plane[1, 2] = np.nan
    colours = viz.colorize(plane)
    assert np.array_equal(colours, matplotlib_colours(plane, "jet")) and colours[1, 2].tolist() == [0, 0, 0]


@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0])
def test_overlay_equals_the_float_blend(alpha):
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (61, 83, 3), dtype=np.uint8))
    plane = maps()[0]
    colours = matplotlib_colours(plane, "jet").astype(np.float32)
    expected = np.clip((1 - alpha) * np.asarray(photo, np.float32) + alpha * colours, 0, 255).astype(np.uint8)
    result = viz.overlay(photo, torch.from_numpy(plane)[None, None], alpha=alpha)
    assert result.size == photo.size and np.array_equal(np.asarray(result), expected)


def test_overlay_resizes_the_map_and_converts_the_photo():
    photo = Image.new("L", (40, 30), 128)
    result = viz.overlay(photo, np.random.default_rng(2).random((3, 4)))
    assert result.mode == "RGB" and result.size == (40, 30)
