"""One explained image: in memory (:class:`Explained`), and as files and a record in an output folder (:func:`outputs`).

Numbers and the size they belong to: ``predictions`` (top-k) and the target's ``probability`` come from the
model's input at ``predicted_at`` (width, height: the model's own preprocessing, unless ``predict_at="explained"``);
the maps explain that class at ``explained_at``, and are brought to the image's ``size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normgrad import pipeline


@dataclass
class Explained:
    """One image's result: maps at the image's size (``{"combined" | layer: (H, W) float32}``), predictions, target."""

    index: int
    name: str
    image: str  # the path, or a dataset's "<dataset>/000017"
    size: tuple[int, int]  # (width, height) of the image
    maps: dict[str, np.ndarray]
    predictions: list[dict]  # [{"class", "name", "probability"}, ...] at predicted_at
    target: dict  # the class explained: {"class", "name", "probability"} (probability at predicted_at)
    predicted_at: tuple[int, int]  # (width, height) of the model input the predictions come from
    explained_at: tuple[int, int]  # (width, height) of the model input explained
    label: int | None = None  # the class a dataset gave with the image
    photo: Any = field(default=None, repr=False)  # the RGB image explained (PIL; with task="detect", its boxes drawn)
    detections: list[dict] | None = None  # task="detect": {"number", "box", "class", "name", "score", "output"} each

    @property
    def map(self) -> np.ndarray:
        """The combined map (the only one with ``combine="none"`` and one layer): (H, W) at the image's size."""
        return self.maps.get(pipeline.COMBINED, next(iter(self.maps.values())))

    def __call__(self) -> Explained:
        """A result that is complete already: the loops hand the writers a callable (see ``normgrad.run.loop.Pending``),
        and an :class:`Explained` made whole in the main thread (detection, segmentation) is its own."""
        return self


def outputs(explained: Explained, name: str, *, run: str, rank: int, identity: Any, layers: list[str] | None, overlay: bool,
            npy: bool, map_dtype: str, overlay_format: str = "png") -> tuple[dict[str, bytes], dict]:  # fmt: skip
    """One image's files (overlay — ``.png`` or ``.jpg`` — and ``.npy`` map per output, at the photo's size) and its record."""
    from normgrad.store import encode_jpeg, encode_npy, encode_png
    from normgrad.viz import overlay as blend

    files, listed = {}, []
    for layer, plane in explained.maps.items():
        stem = name if layer == pipeline.COMBINED else f"{name}_{layer}"
        entry: dict[str, Any] = {"layer": layer}
        if overlay:
            picture = blend(explained.photo, plane)
            if explained.detections is not None:
                picture = boxes_on(picture, explained.detections, layer)
            kind = overlay_format
            files[f"{stem}.{kind}"] = encode_jpeg(picture) if kind == "jpg" else encode_png(picture)
            entry |= {kind: f"{stem}.{kind}", f"{kind}_bytes": len(files[f"{stem}.{kind}"])}
        if npy:
            files[f"{stem}.npy"] = encode_npy(plane if plane.dtype == map_dtype else plane.astype(map_dtype))
            entry |= {"npy": f"{stem}.npy", "npy_bytes": len(files[f"{stem}.npy"])}
        listed.append(entry)
    record = {
        "type": "image",
        "run": run,
        "rank": rank,
        "index": explained.index,
        "name": name,
        "image": explained.image,
        "input": identity,
        "size": list(explained.size),
        "layers": layers or ["input"],
        "outputs": listed,
        "predictions": explained.predictions,
        "target": explained.target,
        "predicted_at": list(explained.predicted_at),
        "explained_at": list(explained.explained_at),
        **({"label": explained.label} if explained.label is not None else {}),
        **({"detections": explained.detections} if explained.detections is not None else {}),
    }
    return files, record


def boxes_on(picture: Any, detections: list[dict], output: str) -> Any:
    """``task="detect"``: the numbered boxes drawn on an overlay, the one its map explains (``output``) highlighted."""
    from normgrad.detection.drawing import box_caption, draw_boxes

    captions = [f"{d['number']} {box_caption(d['name'], d['score'])}" for d in detections]
    highlight = next((k for k, d in enumerate(detections) if d["output"] == output), None)
    return draw_boxes(picture, [d["box"] for d in detections], captions, highlight=highlight)
