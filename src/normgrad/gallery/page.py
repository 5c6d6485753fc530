"""The gallery of an output folder, kept up to date as a run goes: ``index.html`` and ``gallery/``.

Layout (all written through :class:`normgrad.store.OutputStore`: atomic, never through a symlink)::

    OUT/index.html                         the page: static, no user data in it
    OUT/gallery/gallery.js, gallery.css    its code
    OUT/gallery/data/index.js              normgradGallery.index({...}): the chunks and their stamps, run state
    OUT/gallery/data/chunk-NNNNNN.js       normgradGallery.chunk(N, [item, ...]): at most CHUNK items
    OUT/gallery/img/<id[:2]>/<id>.*.jpg    each image's pictures (:mod:`normgrad.gallery.pictures`)

Browsers refuse ``fetch`` of ``file://`` URLs, so the data are scripts the
page loads with ``<script src>``; their JSON is pure ASCII (every other
character escaped), so no name can end a string or a script.  An item per
image (``ok``, ``failed`` or ``interrupted``); an image redone later appears
again in a later chunk and the page keeps the last one.

=================  ===========================================================  ===================
step               what is written                                              cost
=================  ===========================================================  ===================
``start``          page and code; every manifest entry re-chunked; missing      O(images), once
                   pictures of finished images made again (from the ``.npy``
                   maps and the input, or the overlay when the input is gone)
``add``            one image's pictures                                         O(1) per image
``flush``          the open chunk (≤ CHUNK items, kept as JSON text) and        O(CHUNK) per batch,
                   ``index.js``                                                 whatever the total
``finish``         like ``start``, with the run marked finished (compacts)      O(images), once
=================  ===========================================================  ===================
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

import numpy as np

from normgrad.errors import NormGradError
from normgrad.gallery import pictures
from normgrad.store import GALLERY, INDEX, Manifest, OutputConflict, OutputStore, identity, overlay_of

CHUNK = 256
DATA = f"{GALLERY}/data"
STATIC = {INDEX: "index.html", f"{GALLERY}/gallery.js": "gallery.js", f"{GALLERY}/gallery.css": "gallery.css"}
MAX_MAP_BYTES = 1 << 30  # an .npy larger than this is not read back to make pictures


def as_json(value: Any) -> str:
    """Strict JSON in pure ASCII: every other character, and ``<``, ``>``, ``&``, escaped as ``\\uXXXX``.

    Safe inside a script whatever the names hold (``</script>``, quotes, U+2028).
    """
    text = json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # only ever inside strings


def script(call: str, *args: Any) -> bytes:
    """``call(arg, ...);`` with each argument as :func:`as_json`."""
    return f"{call}({','.join(as_json(a) for a in args)});\n".encode("ascii")


def item(entry: dict, settings: dict | None, status: str, pictures_found: set[str] | None = None) -> dict:
    """What the page shows of one manifest entry or journal record (``status``: ok, failed, interrupted).

    ``pictures_found``: the picture files present; an image whose photo had
    to be made from its overlay (the input was gone) shows that instead.
    """
    name = entry["name"]
    image = entry.get("image") or entry.get("path") or name
    shown = {"name": name, "file": PurePosixPath(str(image).replace(os.sep, "/")).name, "image": str(image), "status": status}
    if status != "ok":
        return shown | {"error": entry.get("error") or ("interrupted before its files were complete" if status == "interrupted" else "")}
    settings = settings or {}
    outputs = sorted(entry.get("outputs", []), key=lambda o: o.get("layer") != "combined")  # the combined map first
    picture = pictures.picture_id(name)
    where = pictures.paths(picture, len(outputs))
    width, height = entry.get("size") or (0, 0)
    original = pictures_found is None or where["photo"] in pictures_found or where["overlay_photo"] not in pictures_found
    return shown | {
        "id": picture,
        "v": entry.get("run", ""),
        "size": [width, height],
        "thumb": where["thumb"],
        "thumb_size": list(pictures.fit(*pictures.fit(width or 1, height or 1, pictures.DISPLAY), pictures.THUMB)),
        "photo": where["photo"] if original else where["overlay_photo"],
        "original": original,
        "maps": [
            {
                "layer": o.get("layer", "combined"),
                "view": view,
                "png": _url(overlay_of(o)) if overlay_of(o) else None,  # the overlay, .png or .jpg
                "npy": _url(o["npy"]) if "npy" in o else None,
            }
            for o, view in zip(outputs, where["maps"])
        ],  # fmt: skip
        "predictions": entry.get("predictions", []),
        "target": entry.get("target"),
        "predicted_at": entry.get("predicted_at"),  # (width, height) of the input the predictions come from
        "explained_at": entry.get("explained_at"),
        "method": settings.get("method"),
        "model": settings.get("model"),
        "layers": entry.get("layers") or settings.get("layers") or [],
        "combine": settings.get("combine"),
        "lr": settings.get("lr"),
        "steps": settings.get("steps"),
    }


def _url(relative: str) -> str:
    """A relative URL for an output file: every character but ``/`` and unreserved ones percent-encoded (``:``, ``#``, ``?``, ``%``)."""
    return quote(relative, safe="/")


class Gallery:
    """Writes the gallery of ``store``'s folder; ``live=False``: only pictures (the other ranks under ``torchrun``)."""

    def __init__(self, store: OutputStore, *, live: bool = True, chunk: int = CHUNK) -> None:
        self.store, self.live, self.chunk = store, live, chunk
        self._chunks: list[list[str]] = []  # each chunk's items as JSON text
        self._stamps: list[int] = []
        self._queue: list[str] = []
        self._settings: dict[str, dict] = {}
        self._stamp = int(time.time() * 1000)
        self._running = False
        self._lock = threading.Lock()
        self._warned = False

    # -- whole rebuilds

    def start(
        self,
        manifest: dict | None,
        *,
        running: bool = True,
        redo: bool = False,
        progress: Callable | None = None,
        make_pictures: bool = True,
    ) -> int:
        """Write the page and code, re-chunk every entry of ``manifest``, make missing pictures (all: ``redo``); returns how many.

        ``make_pictures=False`` leaves pictures as they are (tests of the page alone).
        """
        state = Manifest.from_dict(manifest)
        with self._lock:
            self._settings = {run: (info or {}).get("settings") or {} for run, info in state.runs.items()}
            found = set() if redo else self.store.files_below(pictures.FOLDER)
            made = self._ensure_pictures(state, found, progress) if make_pictures else 0
            items = [as_json(item(entry, self._settings.get(entry.get("run")), entry.get("status", "ok"), found))
                     for _, entry in sorted(state.entries.items())]  # fmt: skip
            old = len(self._chunks)
            self._chunks = [items[k : k + self.chunk] for k in range(0, len(items), self.chunk)]
            self._stamps = [self._next() for _ in self._chunks]
            self._queue = []
            self._running = running
            for relative, asset in STATIC.items():
                self.store.write(relative, resources.files("normgrad.gallery").joinpath("static", asset).read_bytes(), replace=True)
            for k in range(len(self._chunks)):
                self._write_chunk(k)
            self._write_index()
            self._remove_chunks(range(len(self._chunks), max(old, self._count_chunk_files())))
        return made

    def finish(self, manifest: dict | None) -> None:
        """The run is over: rebuild from the merged manifest (each image once) and stop the page polling."""
        if self.live:
            self.start(manifest, running=False)

    def stop(self) -> None:
        """An interrupted run: write what is queued and mark the run stopped (best effort, never raises)."""
        if not self.live or not self._running:
            return
        try:
            self._running = False
            self.flush()
        except Exception:  # noqa: BLE001 - the run is already ending with its own error
            pass

    # -- as results arrive

    def add(self, record: dict, photo: Any, planes: dict[str, np.ndarray]) -> None:
        """One finished image (its journal record and its ``{layer: (H, W) map}`` as written): make its pictures, queue its item.

        Safe to call from several writer threads at once (each image's pictures are its own files)."""
        shown = item(record, self._settings.get(record.get("run")), "ok")
        planes = [planes[o.get("layer", "combined")] for o in _ordered(record)]
        try:
            self._write_pictures(shown, pictures.render(photo, planes))
        except OutputConflict as error:
            self._warn(error)
        if self.live:
            with self._lock:
                self._queue.append(as_json(shown))

    def fail(self, record: dict) -> None:
        """One image that could not be explained (its ``failed`` journal record)."""
        if self.live:
            with self._lock:
                self._queue.append(as_json(item(record, None, "failed")))

    def flush(self) -> None:
        """Append the queued items to the open chunk(s) and rewrite those and ``index.js`` (O(CHUNK), whatever the total)."""
        if not self.live:
            return
        with self._lock:
            touched = set()
            for text in self._queue:
                if not self._chunks or len(self._chunks[-1]) >= self.chunk:
                    self._chunks.append([])
                    self._stamps.append(0)
                self._chunks[-1].append(text)
                touched.add(len(self._chunks) - 1)
            self._queue = []
            for k in sorted(touched):
                self._stamps[k] = self._next()
                self._write_chunk(k)
            self._write_index()

    # -- helpers

    def _next(self) -> int:
        self._stamp += 1
        return self._stamp

    def _write_chunk(self, k: int) -> None:
        body = f"normgradGallery.chunk({k},[{','.join(self._chunks[k])}]);\n".encode("ascii")
        self.store.write(f"{DATA}/chunk-{k:06d}.js", body, replace=True)

    def _write_index(self) -> None:
        index = {
            "version": 1,
            "chunks": self._stamps,
            "running": self._running,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "folder": os.path.basename(os.path.abspath(self.store.out)),
        }
        self.store.write(f"{DATA}/index.js", script("normgradGallery.index", index), replace=True)

    def _count_chunk_files(self) -> int:
        count = 0
        while self.store.lstat(f"{DATA}/chunk-{count:06d}.js") is not None:
            count += 1
        return count

    def _remove_chunks(self, numbers: Iterable[int]) -> None:
        for k in numbers:
            self.store.remove(f"{DATA}/chunk-{k:06d}.js")

    def _write_pictures(self, shown: dict, data: list[bytes]) -> list[str]:
        written = [shown["thumb"], shown["photo"], *(m["view"] for m in shown["maps"])]
        for relative, picture in zip(written, data):
            self.store.write(relative, picture, replace=True)
        return written

    def _ensure_pictures(self, state: Manifest, found: set[str], progress: Callable | None) -> int:
        """Make the pictures of finished images that lack any (a run killed between an image and its pictures); ``found`` grows."""
        missing = []
        for entry in state.entries.values():
            if entry.get("status", "ok") == "ok":
                shown = item(entry, None, "ok", found)
                if {shown["thumb"], shown["photo"], *(m["view"] for m in shown["maps"])} - found:
                    missing.append(entry)
        for entry in progress(missing) if progress and missing else missing:
            try:
                photo, original = self._source(entry)
                planes = [self.store.read_map(o, limit=MAX_MAP_BYTES) for o in _ordered(entry)]
                shown = item(entry, None, "ok")
                if not original:
                    shown["photo"] = pictures.paths(shown["id"], 0)["overlay_photo"]
                found |= set(self._write_pictures(shown, pictures.render(photo, planes, overlaid=not original)))
            except (NormGradError, OSError, ValueError) as error:
                self._warn(f"no pictures for {entry.get('name')}: {error}")
        return len(missing)

    def _source(self, entry: dict) -> tuple[Any, bool]:
        """The photo to show: the input when it is unchanged, else the overlay normgrad wrote (``False``: not the original)."""
        from PIL import Image

        from normgrad.images import load_image, to_rgb

        path = entry.get("image")
        if path and entry.get("input") and identity(path) == entry["input"]:
            return load_image(path), True
        written = overlay_of(_ordered(entry)[0])  # None: written with --no-overlay
        overlay = self.store.read(written, limit=MAX_MAP_BYTES) if written else None
        if overlay is None:
            raise NormGradError("neither the input nor its overlay can be read")
        return to_rgb(Image.open(io.BytesIO(overlay))), False

    def _warn(self, error: Any) -> None:
        if not self._warned:
            print(f"normgrad: gallery: {error} (the gallery may miss pictures; rebuild it with: normgrad gallery {self.store.out})",
                  file=sys.stderr)  # fmt: skip
            self._warned = True


def _ordered(entry: dict) -> list[dict]:
    return sorted(entry.get("outputs", []), key=lambda o: o.get("layer") != "combined")
