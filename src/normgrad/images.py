"""Reading images safely and bringing maps back to the original pixel size.

JPEG, PNG, WebP, TIFF and anything else Pillow reads; grayscale, RGBA
(composited on white), palette, 16-bit and float images become 8-bit RGB;
EXIF orientation is applied, so the image is the one a viewer shows.

Limits, checked from the file header before any pixel is decoded (an image
beyond them is refused with one :class:`NormGradError`; the CLI skips it and
goes on):

=====================  ==========================  =========================================================
limit                  value                       why
=====================  ==========================  =========================================================
``MAX_PIXELS``         64 megapixels (2²⁶)         the map, overlay and colours at full size stay under ~4 GB;
                                                   Pillow's own bomb check (179 MP) is never reached
``MAX_ASPECT_RATIO``   20 (longer / shorter side)  wider strips are not photos a classifier was trained on;
                                                   a 3000×6 strip would become a 224×112000 input
``MAX_INPUT_PIXELS``   1 megapixel (1024²)         the preprocessed model input (see :func:`check_input_size`);
                                                   one image's activations stay a few GB for a ResNet-50
=====================  ==========================  =========================================================

Pixels that are NaN or infinite (float TIFFs) are refused too: they would
silently turn into a black image.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from normgrad.errors import NormGradError

MAX_PIXELS = 1 << 26
MAX_ASPECT_RATIO = 20.0
MAX_INPUT_PIXELS = 1 << 20


def load_image(
    source: str | Path | IO[bytes], *, max_pixels: int | None = MAX_PIXELS, max_aspect_ratio: float | None = MAX_ASPECT_RATIO
) -> Any:
    """Open an image (a path or a binary file object) as an 8-bit RGB ``PIL.Image``, EXIF orientation applied.

    ``max_pixels`` / ``max_aspect_ratio`` (``None``: no limit) are checked from
    the header, before decoding.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = repr(str(source)) if isinstance(source, (str, Path)) else repr(getattr(source, "name", "image"))
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise NormGradError(f"image {label} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower and says more
            with Image.open(source) as opened:
                check_size(*opened.size, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except Image.DecompressionBombError as error:
        limit = f"{max_pixels / 1e6:.1f} megapixels" if max_pixels else "Pillow's limit"
        raise NormGradError(f"image {label} is larger than {limit} ({error})") from error
    except NormGradError as error:
        raise NormGradError(f"image {label} {error}") from None
    except UnidentifiedImageError:
        raise NormGradError(f"cannot read image {label}: not an image format Pillow knows (or a damaged file)") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise NormGradError(f"cannot read image {label}: {error}") from error
    try:
        return to_rgb(image)
    except NormGradError as error:
        raise NormGradError(f"image {label} {error}") from None


def check_size(width: int, height: int, *, max_pixels: int | None = MAX_PIXELS, max_aspect_ratio: float | None = MAX_ASPECT_RATIO) -> None:
    """Refuse images with no pixels, more than ``max_pixels`` or a longer/shorter side ratio above ``max_aspect_ratio``."""
    if width < 1 or height < 1:
        raise NormGradError(f"has no pixels ({width}×{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise NormGradError(f"is {width}×{height} = {width * height / 1e6:.1f} megapixels; the limit is {max_pixels / 1e6:.1f}")
    if max_aspect_ratio is not None and max(width, height) / min(width, height) > max_aspect_ratio:
        ratio = max(width, height) / min(width, height)
        raise NormGradError(f"is {width}×{height}, an aspect ratio of {ratio:.0f}:1; the limit is {max_aspect_ratio:g}:1")


def check_input_size(height: int, width: int, max_pixels: int = MAX_INPUT_PIXELS) -> None:
    """Refuse a preprocessed model input of more than ``max_pixels`` (its activations would not fit in memory)."""
    if height * width > max_pixels:
        raise NormGradError(
            f"the image would be resized to a {height}×{width} model input ({height * width / 1e6:.1f} MP); "
            f"the limit is {max_pixels / 1e6:.1f} MP"
        )


def to_rgb(image: Any) -> Any:
    """Any Pillow mode → 8-bit RGB (16/32-bit and float rescaled, alpha composited on white); NaN/inf pixels refused."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image).astype(np.float64)
        _check_finite(array)
        if image.mode == "F":
            low, high = float(array.min()), float(array.max())
            array = (array - low) / max(high - low, 1e-12) * 255.0
        else:
            array = array / (65535.0 if array.max() > 255 or image.mode.startswith("I;16") else 255.0) * 255.0
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _check_finite(array: np.ndarray) -> None:
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise NormGradError(f"has {bad} NaN or infinite pixel value(s); refusing to guess what they should be")


def from_array(array: np.ndarray) -> Any:
    """A (H, W) or (H, W, 3|4) uint8/uint16/float array (e.g. ``skimage.data``) as an RGB image; NaN/inf refused."""
    from PIL import Image

    if array.dtype == np.uint16:
        return to_rgb(Image.fromarray(array.astype(np.float32) / 257.0).convert("L"))
    if array.dtype != np.uint8:
        array = np.asarray(array, dtype=np.float64)
        _check_finite(array)
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return to_rgb(Image.fromarray(array))


def to_original_size(saliency_map: Tensor, width: int, height: int) -> Tensor:
    """Bilinear resize of an (N, 1, h, w) map to the original ``height × width`` (as is when already that size)."""
    if tuple(saliency_map.shape[-2:]) == (height, width):
        return saliency_map.float()
    return F.interpolate(saliency_map.float(), size=(height, width), mode="bilinear", align_corners=False)
