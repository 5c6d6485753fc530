"""Reading a run folder from Python: ``normgrad.open_run(DIR)``.

>>> run = ng.open_run("maps/")
>>> run.settings["method"], len(run)
>>> for record in run:                       # names, predictions, targets: no map is read
...     print(record.name, record.predictions[0]["name"])
>>> saliency = run.map("a/cat")               # the combined map, (H, W), read now
>>> per_layer = run.map(0, layer="layer4")    # by index (records sorted by name) and layer, where saved

One reader for both storages (:mod:`normgrad.store.shards`): a map is read
from its ``.npy`` file or from its range of a shard when asked for, never
before.  What it reads is checked: the manifest's shape
(:mod:`normgrad.store.schema`), and each map's bytes (size, CRC-32 in a
shard, type, shape against the image's size, finite values); anything else
is one :class:`~normgrad.errors.NormGradError`.  Read only: nothing in the
folder is written, locked or followed through a symlink, and a run that is
still going (or was killed) is read as far as its journals go.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from normgrad.errors import NormGradError, did_you_mean
from normgrad.store.journal import JsonLines
from normgrad.store.layout import INTERNAL, MANIFEST, OutputConflict, open_below, split_relative
from normgrad.store.manifest import Manifest, parse_manifest
from normgrad.store.shards import decode_map, pread_exactly

COMBINED = "combined"  # the layer name of the combined map (as the pipeline names it)
HEADER_BYTES = 4096  # room for a .npy header when bounding a map file by its image's size
READ_ONLY = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def open_run(out: str | Path) -> Run:
    """The run folder ``out`` (the ``--out`` of ``normgrad explain``, or of the run API) for reading."""
    return Run(out)


@dataclass(frozen=True)
class Record:
    """One explained image: its name in the folder, input path, size ``(width, height)``, the model's top classes
    (``{"class", "name", "probability"}``), the explained target, the layers, and its outputs as recorded."""

    name: str
    image: str | None
    size: tuple[int, int] | None
    predictions: list[dict]
    target: dict | None
    layers: list[str]
    outputs: list[dict]
    run: str | None
    reader: Run = field(repr=False, compare=False)

    @property
    def maps(self) -> list[str]:
        """The layers with a saved map (``"combined"`` first)."""
        return [o.get("layer", COMBINED) for o in self.outputs if o.get("npy") is not None or o.get("shard") is not None]

    def map(self, layer: str | None = None) -> Any:
        """This image's map (``layer=None``: the combined one), read now."""
        return self.reader.map(self.name, layer)


class Run:
    """A run folder, read lazily: :attr:`settings`, the records (``len``, iteration, ``run[i]``, ``run["name"]``),
    :attr:`predictions`, and :meth:`map`; :attr:`failed` and :attr:`interrupted` list the images without a map.

    Thread-safe (maps are read with ``pread``), and it can be handed to DataLoader workers: a forked worker shares
    its descriptors, a spawned one opens the folder again (pickling keeps only the path).
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        if not self.out.is_dir():
            raise NormGradError(f"{self.out} is not a folder; give the output folder of a normgrad run (it holds {MANIFEST})")
        self._fd = os.open(self.out, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        self._shards: dict[str, int] = {}
        self._lock = threading.Lock()
        try:
            state = self._read_state()
        except BaseException:
            self.close()
            raise
        self.runs: dict[str, dict] = state.runs
        self.current: str | None = state.current
        self.settings: dict = (state.runs.get(state.current) or {}).get("settings") or {}
        self.storage: str = self.settings.get("storage", "files")
        entries = [state.entries[name] for name in sorted(state.entries)]
        self._entries = [e for e in entries if e.get("status") == "ok"]
        self._by_name = {e["name"]: i for i, e in enumerate(self._entries)}
        self.failed: list[dict] = [{k: v for k, v in e.items() if k != "status"} for e in entries if e.get("status") == "failed"]
        self.interrupted: list[dict] = [{k: v for k, v in e.items() if k != "status"} for e in entries if e.get("status") == "interrupted"]

    def _read_state(self) -> Manifest:
        try:
            fd = os.open(MANIFEST, READ_ONLY, dir_fd=self._fd)
        except FileNotFoundError:
            raise NormGradError(
                f"{self.out} is not a normgrad run folder: it holds no {MANIFEST} (made by normgrad explain --out {self.out})"
            ) from None
        except OSError as error:
            raise NormGradError(f"cannot read {self.out / MANIFEST}: {error.strerror or error}") from None
        with os.fdopen(fd, "rb") as file:
            manifest = parse_manifest(file.read(), self.out / MANIFEST, advice="it cannot be read as a normgrad run")
        state = Manifest.from_dict(manifest)
        try:
            journals = open_below(self._fd, f"{INTERNAL}/journal", self.out)
        except (OSError, OutputConflict):
            return state  # no journal folder: every run was merged
        try:
            for name in sorted(n for n in os.listdir(journals) if n.endswith(".jsonl")):
                state.apply(JsonLines(name, dir_fd=journals).read())  # a run still going, or killed before its merge
        finally:
            os.close(journals)
        return state

    # -- records

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Record]:
        return (self._record(entry) for entry in self._entries)

    def __getitem__(self, key: int | str) -> Record:
        return self._record(self._entries[self._index(key)])

    @property
    def names(self) -> list[str]:
        """The images' names in the folder, sorted (the order of iteration and of integer indices)."""
        return [e["name"] for e in self._entries]

    @property
    def records(self) -> list[Record]:
        return list(self)

    @property
    def predictions(self) -> dict[str, list[dict]]:
        """Each image's top classes by name: ``{"a/cat": [{"class": 281, "name": "tabby", "probability": 0.61}, ...]}``."""
        return {e["name"]: e.get("predictions", []) for e in self._entries}

    def _index(self, key: int | str) -> int:
        if isinstance(key, str):
            if key not in self._by_name:
                raise NormGradError(f"no image named {key!r} in {self.out}{did_you_mean(key, list(self._by_name))}")
            return self._by_name[key]
        if isinstance(key, bool) or not isinstance(key, int) or not -len(self._entries) <= key < len(self._entries):
            raise NormGradError(f"image index {key!r} out of range: {self.out} holds {len(self._entries)} explained image(s)")
        return key % len(self._entries)

    def _record(self, entry: dict) -> Record:
        size = entry.get("size")
        return Record(entry["name"], entry.get("image"), tuple(size) if size else None, entry.get("predictions", []),
                      entry.get("target"), entry.get("layers", []), entry.get("outputs", []), entry.get("run"), self)  # fmt: skip

    # -- maps

    def map(self, key: int | str, layer: str | None = None) -> Any:
        """The map of image ``key`` (index or name) for ``layer`` (``None``: the combined map, or the only one), as a
        NumPy array of the image's size, float32 or float16 as saved; read from disk now."""
        entry = self._entries[self._index(key)]
        outputs = {o.get("layer", COMBINED): o for o in entry.get("outputs", []) if o.get("npy") is not None or o.get("shard") is not None}
        if not outputs:
            raise NormGradError(f"{entry['name']}: no map was saved (run with .npy maps: without --no-npy)")
        if layer is None:
            layer = COMBINED if COMBINED in outputs or len(outputs) != 1 else next(iter(outputs))
        if layer not in outputs:
            saved = ", ".join(outputs)
            raise NormGradError(f"{entry['name']}: no map saved for layer {layer!r}{did_you_mean(layer, list(outputs))}; saved: {saved}")
        return self._read(outputs[layer], entry)

    def _read(self, output: dict, entry: dict) -> Any:
        size = entry.get("size")
        if output.get("shard") is not None:
            where = self.out / output["shard"]
            data = pread_exactly(self._shard(output["shard"]), output["offset"], output["bytes"])
        else:
            where = self.out / output["npy"]
            limit = size[0] * size[1] * 4 + HEADER_BYTES if size else None
            data = self._file(output["npy"], limit)
        array = decode_map(data, output, where)
        if size and array.ndim == 2 and array.shape != (size[1], size[0]):
            raise NormGradError(f"{where}: a map of shape {list(array.shape)} for an image of {size[0]}x{size[1]} pixels")
        return array

    def _file(self, relative: str, limit: int | None) -> bytes | None:
        fd = self._open(relative)
        with os.fdopen(fd, "rb") as file:
            if limit is not None and os.fstat(file.fileno()).st_size > limit:
                raise NormGradError(f"{self.out / relative} is larger than a map of its image can be")
            return file.read()

    def _shard(self, relative: str) -> int:
        with self._lock:
            if relative not in self._shards:
                self._shards[relative] = self._open(relative)
            return self._shards[relative]

    def _open(self, relative: str) -> int:
        """A plain file below the folder, opened without following a symlink on the way."""
        try:
            parent, name = split_relative(relative)
            directory = open_below(self._fd, parent, self.out) if parent else os.dup(self._fd)
        except (OSError, OutputConflict):
            raise NormGradError(f"{self.out / PurePosixPath(relative)} is missing (or below a symlink)") from None
        try:
            fd = os.open(name, READ_ONLY, dir_fd=directory)
        except FileNotFoundError:
            raise NormGradError(f"{self.out / relative} is missing") from None
        except OSError as error:
            raise NormGradError(f"cannot read {self.out / relative}: {error.strerror or error}") from None
        finally:
            os.close(directory)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NormGradError(f"{self.out / relative} is not a plain file")
        return fd

    def close(self) -> None:
        """Close the folder and the shards (also done when the reader is collected, or at the end of a ``with``)."""
        with self._lock:
            for fd in [*self._shards.values(), self._fd]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._shards, self._fd = {}, -1

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()

    def __reduce__(self) -> tuple:
        return (open_run, (str(self.out),))

    def __repr__(self) -> str:
        return f"<normgrad run {self.out}: {len(self)} image(s), {self.settings.get('method')}, {self.storage}>"
