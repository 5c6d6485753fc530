"""Writing a clip's explanation: per-frame overlays, a strip (one PNG montage) and an animation.

One folder per clip::

    frame_000.png ...   each frame with its map blended over it (one colour scale for the whole clip)
    strip.png           up to ``strip_frames`` overlays side by side, evenly chosen, each labelled with its frame
    animation.gif       the overlays in order, at the video's frame rate (volumes: 8 slices a second)
    map.npy             the (T, H, W) float32 map in [0, 1]
    summary.json        method, layers, target, predictions, frames, files

The colours are those of :func:`normgrad.viz.colour_table`, indexed by the
map's value over the whole clip (not per frame): a frame where the model
sees nothing stays blue.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from normgrad.video.explain import ClipResult
from normgrad.video.read import Clip
from normgrad.viz import colour_indices, colour_table

STRIP_FRAMES = 8


def overlays(clip: Clip, saliency: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(T, H, W, 3) uint8: each frame averaged with the colours of its map (``saliency`` (T, H, W) in [0, 1])."""
    colours = colour_table(cmap)[colour_indices(np.clip(saliency.astype(np.float32), 0, 1))]
    return ((clip.frames.astype(np.uint16) + colours) >> 1).astype(np.uint8)


def strip(frames: np.ndarray, count: int = STRIP_FRAMES, labels: list[str] | None = None) -> np.ndarray:
    """Up to ``count`` of ``frames`` (T, H, W, 3), evenly chosen, side by side with a 4-pixel white gap: (H, W', 3)."""
    chosen = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    gap = np.full((frames.shape[1], 4, 3), 255, np.uint8)
    pieces = []
    for index in chosen:
        frame = frames[index].copy()
        if labels is not None:
            frame = _label(frame, labels[index])
        pieces += [frame, gap]
    return np.concatenate(pieces[:-1], axis=1)


def _label(frame: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((2, 1), text)
    draw.rectangle((0, 0, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255))
    return np.asarray(image)


def write_clip(folder: str | Path, clip: Clip, result: ClipResult, *, cmap: str = "jet") -> dict[str, str]:
    """Write the clip's overlays, strip, animation, map and summary into ``folder``; returns ``{what: file name}``."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    blended = overlays(clip, result.map, cmap)
    word = "frame" if clip.kind == "video" else "slice"
    names = [f"{word}_{i:03d}.png" for i in range(len(blended))]
    for name, frame in zip(names, blended):
        Image.fromarray(frame).save(folder / name)
    Image.fromarray(strip(blended, labels=[f"{word} {i}" for i in range(len(blended))])).save(folder / "strip.png")
    duration = int(round(1000 / clip.fps)) if clip.fps else 125
    pictures = [Image.fromarray(frame) for frame in blended]
    pictures[0].save(folder / "animation.gif", save_all=True, append_images=pictures[1:], duration=max(duration, 20), loop=0)
    np.save(folder / "map.npy", result.map.astype(np.float32))
    files = {"frames": names, "strip": "strip.png", "animation": "animation.gif", "map": "map.npy"}
    summary = {
        "clip": clip.name,
        "kind": clip.kind,
        "frames": int(len(blended)),
        "size": [int(clip.frames.shape[1]), int(clip.frames.shape[2])],
        "method": result.method,
        "layers": result.layers,
        "target": {"index": result.target, "name": result.target_name},
        "predictions": [{"name": name, "probability": p} for name, p in result.predictions],
        "files": files,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    return {"strip": "strip.png", "animation": "animation.gif", "map": "map.npy", "summary": "summary.json"}
