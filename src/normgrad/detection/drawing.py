"""Boxes drawn on a picture (Pillow): the detections shown on ``normgrad explain --task detect``'s overlays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PALETTE = ((255, 255, 255), (255, 215, 0), (0, 255, 255), (255, 0, 255), (127, 255, 0), (255, 127, 80))


def box_caption(label: str, score: float) -> str:
    return f"{label} {score:.2f}"


def draw_boxes(
    image: Any, boxes: Sequence[Sequence[float]], captions: Sequence[str] = (), *, highlight: int | None = None, width: int = 2
) -> Any:
    """A copy of the PIL ``image`` with ``boxes`` (x0, y0, x1, y1 in its pixels) outlined and captioned.

    With ``highlight``, that box is drawn thick in white and the others thin and
    dim, so an overlay shows which detection its map explains.
    """
    from PIL import ImageDraw

    picture = image.convert("RGB").copy()
    draw = ImageDraw.Draw(picture)
    for index, box in enumerate(boxes):
        x0, y0, x1, y1 = (float(v) for v in box)
        chosen = highlight is None or index == highlight
        colour = PALETTE[index % len(PALETTE)] if highlight is None else ((255, 255, 255) if chosen else (160, 160, 160))
        thickness = width + 1 if highlight is not None and chosen else (width if chosen else 1)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour, width=thickness)
        if index < len(captions) and chosen:
            text_y = y0 - 11 if y0 >= 11 else y1 + 1
            draw.text((x0 + 1, text_y), captions[index], fill=colour)
    return picture


__all__ = ["box_caption", "draw_boxes"]
