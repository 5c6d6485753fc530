"""Reading images and bringing maps back to the original pixel size.

JPEG, PNG, WebP, TIFF and anything else Pillow reads; grayscale, RGBA
(composited on white), palette and 16-bit images become 8-bit RGB; EXIF
orientation is applied, so the image is the one a viewer shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from normgrad.errors import NormGradError


def load_image(path: str | Path) -> Any:
    """Open an image as an 8-bit RGB ``PIL.Image``, EXIF orientation applied."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise NormGradError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise NormGradError(f"cannot read image {str(path)!r}: {error}") from error
    return to_rgb(image)


def to_rgb(image: Any) -> Any:
    """Any Pillow mode → 8-bit RGB (16/32-bit and float rescaled, alpha composited on white)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image).astype(np.float64)
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


def from_array(array: np.ndarray) -> Any:
    """A (H, W) or (H, W, 3|4) uint8/uint16/float array (e.g. ``skimage.data``) as an RGB image."""
    from PIL import Image

    if array.dtype == np.uint16:
        return to_rgb(Image.fromarray(array.astype(np.float32) / 257.0).convert("L"))
    if array.dtype != np.uint8:
        array = np.clip(np.asarray(array, dtype=np.float64) * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return to_rgb(Image.fromarray(array))


def to_original_size(saliency_map: Tensor, width: int, height: int) -> Tensor:
    """Bilinear resize of an (N, 1, h, w) map to the original ``height × width`` (as is when already that size)."""
    if tuple(saliency_map.shape[-2:]) == (height, width):
        return saliency_map.float()
    return F.interpolate(saliency_map.float(), size=(height, width), mode="bilinear", align_corners=False)
