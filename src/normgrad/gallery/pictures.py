"""The pictures of one image in the gallery: a thumbnail, the photo, and each map's colours, at display size.

=================  ===================================  ===============================================
file               what                                 size
=================  ===================================  ===============================================
``<id>.t.jpg``     the main map blended over the photo  longest side ≤ ``THUMB`` (256 px), JPEG
                   (``alpha`` 0.5, as ``viz.overlay``)
``<id>.p.jpg``     the photo                            longest side ≤ ``DISPLAY`` (1024 px), JPEG
``<id>.m<k>.jpg``  map ``k``'s colours                  the photo's display size, JPEG
``<id>.o.jpg``     the overlay instead of the photo,    as the photo
                   when the input is gone
=================  ===================================  ===============================================

Colours are ``viz.colorize``'s: the map min-max normalised over all its
pixels, then the ``jet`` colormap (256 levels, looked up in a table).  The
page lays the map's colours over the photo with CSS opacity, so its slider
shows ``(1 − α)·photo + α·colours``, the blend ``viz.overlay`` draws.
Pictures are never upscaled.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np

from normgrad.viz import palette_image

THUMB, DISPLAY, QUALITY = 256, 1024, 85
FOLDER = "gallery/img"


def picture_id(name: str) -> str:
    """A stable id for an output name (its pictures' file names): 20 hex digits of its SHA-256."""
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def paths(picture: str, maps: int) -> dict[str, Any]:
    """Relative paths of an image's pictures: ``thumb``, ``photo``, ``maps`` (one per map), and ``overlay_photo``:
    the photo made from the overlay when the input is gone (``normgrad gallery`` on a moved folder)."""
    stem = f"{FOLDER}/{picture[:2]}/{picture}"
    return {"thumb": f"{stem}.t.jpg", "photo": f"{stem}.p.jpg", "overlay_photo": f"{stem}.o.jpg",
            "maps": [f"{stem}.m{k}.jpg" for k in range(maps)]}  # fmt: skip


def fit(width: int, height: int, side: int) -> tuple[int, int]:
    """``width × height`` scaled down (never up) so that the longer side is at most ``side``."""
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def render(photo: Any, planes: list[np.ndarray], main: int = 0, *, overlaid: bool = False) -> list[bytes]:
    """JPEG bytes of ``[thumbnail, photo, colours of planes[0], planes[1], ...]``; ``planes`` are (H, W) maps at the photo's size.

    ``overlaid``: ``photo`` is already the overlay (the input is gone), so the thumbnail is ``photo`` itself.
    """
    from PIL import Image

    photo = photo.convert("RGB")
    size = fit(*photo.size, DISPLAY)
    shown = photo if size == photo.size else photo.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    thumb_size = fit(*size, THUMB)
    small = shown.resize(thumb_size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    thumb = small if overlaid else Image.blend(small, colours(planes[main], thumb_size), 0.5)
    return [jpeg(thumb), jpeg(shown)] + [jpeg(colours(plane, size)) for plane in planes]


def colours(plane: np.ndarray, size: tuple[int, int], cmap: str = "jet") -> Any:
    """An RGB ``PIL.Image`` of ``size`` = (w, h): the map resized, normalised with its own min and max, coloured.

    Resizing (bilinear, antialiased) keeps values within [min, max], so the
    levels are those of the full-size map; colouring is a palette lookup.
    """
    from PIL import Image

    plane = np.asarray(plane, dtype=np.float32)
    low, high = float(plane.min()), float(plane.max())
    if plane.shape != (size[1], size[0]):
        plane = np.asarray(Image.fromarray(plane).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    levels = np.clip((plane - low) * (256.0 / max(high - low, 1e-12)), 0, 255).astype(np.uint8)  # matplotlib's 256 levels
    return palette_image(levels, cmap)  # matplotlib's colours, without matplotlib for "jet"


def jpeg(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=QUALITY, subsampling=0)  # 4:4:4: saturated map colours keep their hue
    return buffer.getvalue()
