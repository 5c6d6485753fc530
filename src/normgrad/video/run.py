"""``normgrad explain`` on videos and volumes: each clip into its own folder, and one page showing them all.

::

    out/<clip>/frame_000.png ... strip.png animation.gif map.npy summary.json   (normgrad.video.write)
    out/index.html                                                               every clip's strip and animation
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from normgrad.errors import NormGradError
from normgrad.models import LoadedModel, load
from normgrad.video.explain import ClipResult, explain_clip
from normgrad.video.read import is_clip_path, read_clip
from normgrad.video.write import write_clip


@dataclass(frozen=True)
class ClipOptions:
    """What to explain and how: the model (name and weights), method, layers, target, frames per clip, combination."""

    model: str = "torchvision:r3d_18"
    weights: str | None = "default"
    method: str = "normgrad"
    layers: tuple[str, ...] | None = None
    target: str | None = None  # None or "auto": the predicted class; an index or a class name
    frames: int = 16
    combine: str = "product"
    lr: float | None = None
    device: str = "cpu"


def explain_files(
    paths: Sequence[str | Path], out: str | Path, options: ClipOptions, progress: Callable[[str], None] | None = None
) -> list[tuple[str, ClipResult]]:
    """Explain each clip of ``paths`` into ``out/<name>/``; write ``out/index.html``; returns ``(folder name, result)`` pairs."""
    paths = [Path(p) for p in paths]
    odd = [str(p) for p in paths if not is_clip_path(p)]
    if odd:
        raise NormGradError(f"videos and volumes cannot be mixed with other inputs: {', '.join(odd[:3])}")
    clips = [read_clip(path, options.frames) for path in paths]  # every input checked before the model loads
    weights = None if options.weights in (None, "none") else options.weights
    loaded = load(options.model, weights=weights, device=options.device)
    target = _target(loaded, options.target)
    out = Path(out)
    done: list[tuple[str, ClipResult]] = []
    used: set[str] = set()
    for clip in clips:
        folder = _unique(clip.name, used)
        result = explain_clip(
            loaded, clip, method=options.method, layers=list(options.layers) if options.layers else None, target=target,
            combine_mode=options.combine, lr=options.lr,
        )  # fmt: skip
        write_clip(out / folder, clip, result)
        done.append((folder, result))
        if progress is not None:
            progress(folder)
    (out / "index.html").write_text(page(done, loaded.name))
    return done


def _target(loaded: LoadedModel, spec: str | None) -> int | None:
    if spec is None or spec == "auto":
        return None
    if spec.isdigit():
        return int(spec)
    return loaded.class_index(spec)


def _unique(name: str, used: set[str]) -> str:
    folder, count = name or "clip", 1
    while folder in used:
        count += 1
        folder = f"{name}-{count}"
    used.add(folder)
    return folder


def page(done: list[tuple[str, ClipResult]], model: str) -> str:
    """A self-contained HTML page: per clip, its animation, strip, target and top prediction."""
    cards = []
    for folder, result in done:
        name = html.escape(folder)
        best = f"{html.escape(result.predictions[0][0])} ({result.predictions[0][1]:.1%})" if result.predictions else ""
        cards.append(
            f"<section><h2>{name}</h2><p>explained: {html.escape(result.target_name)} · predicted: {best} · "
            f"{html.escape(result.method)} at {html.escape(', '.join(result.layers))}</p>"
            f'<img src="{name}/animation.gif" alt="{name} animation"><br><img src="{name}/strip.png" alt="{name} strip"></section>'
        )
    return (
        "<!doctype html><meta charset='utf-8'><title>normgrad: clips</title>"
        "<style>body{font-family:sans-serif;margin:1em}img{max-width:100%;image-rendering:pixelated}section{margin-bottom:2em}</style>"
        f"<h1>normgrad explain: {len(done)} clip(s), {html.escape(model)}</h1>" + "".join(cards)
    )
