"""The encodings a run writes: PNG overlays decode to exactly the pixels given, ``.npy`` maps to the array."""

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from normgrad.store import encode, encode_npy, encode_png


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3), ("RGBA", 4)])
@pytest.mark.parametrize("height, width", [(1, 1), (1, 7), (9, 1), (37, 53)])
def test_png_decodes_to_the_same_pixels(mode, channels, height, width):
    pixels = np.random.default_rng(height * width).integers(0, 256, (height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    decoded = Image.open(io.BytesIO(encode_png(image)))
    assert decoded.mode == mode and decoded.size == (width, height)
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


@pytest.fixture(params=["isal", "zlib"])
def deflater(request, monkeypatch):
    """Each deflate the encoder may use: ISA-L's (where installed) and zlib's."""
    if request.param == "isal":
        pytest.importorskip("isal")
    else:
        monkeypatch.setattr(encode, "isal_zlib", None)
    return request.param


@pytest.mark.parametrize("level", [0, 1, 9])
def test_png_is_lossless_at_every_level(level, deflater):
    ramp = np.add.outer(np.arange(40), np.arange(60)).astype(np.uint8)  # wraps past 255 in the Up filter
    image = Image.fromarray(np.stack([ramp, 255 - ramp, ramp * 3], -1))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(image, level)))), np.asarray(image))


def test_png_of_another_mode_goes_through_pillow():
    image = Image.fromarray(np.arange(24, dtype=np.uint8).reshape(4, 6)).convert("P")
    decoded = Image.open(io.BytesIO(encode_png(image)))
    assert decoded.mode == "P" and np.array_equal(np.asarray(decoded), np.asarray(image))


def test_npy_round_trip_keeps_dtype_and_values():
    array = np.random.default_rng(0).random((5, 7)).astype(np.float16)
    loaded = np.load(io.BytesIO(encode_npy(array)), allow_pickle=False)
    assert loaded.dtype == np.float16 and np.array_equal(loaded, array)


@pytest.mark.parametrize("level", [0, 1, 3])
def test_deflate_streams_inflate_to_the_data(level, deflater):
    data = np.random.default_rng(level).integers(0, 8, 50_000, dtype=np.uint8).tobytes()
    assert zlib.decompress(encode.deflate(data, level)) == data
