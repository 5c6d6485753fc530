"""What a run will do, decided by rank 0 under the folder's lock: each input's name, and whether to explain it, skip it
(done earlier, ``--resume``) or refuse the run (a file in the way, another image's name, other settings)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from normgrad.store.identity import identity
from normgrad.store.layout import GALLERY, GALLERY_CLAIM, INDEX, MANIFEST, StoreError, fatal, now
from normgrad.store.manifest import Manifest, entry_files
from normgrad.store.names import output_names

if TYPE_CHECKING:
    from normgrad.store.folder import OutputStore


@dataclass
class Work:
    """One image a run will explain: position in the input list, path, name, files, and the files it may replace."""

    index: int
    path: str
    name: str
    files: list[str]
    replace: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """What rank 0 decided: the run id, the images to explain, those already done (resume) and those skipped."""

    run: str
    work: list[Work]
    done: list[str]
    skipped: list[tuple[str, str]]  # (path, reason)
    gallery: bool = False  # normgrad owns index.html and gallery/ and this run keeps them up to date


def begin(
    store: OutputStore,
    settings: dict,
    inputs: Sequence[tuple[str, str]],
    files_of: Callable[[str], list[str]],
    *,
    resume: bool,
    overwrite: bool,
    world: int = 1,
    gallery: bool = False,
) -> Plan:
    """Lock the folder, name the ``(path, root)`` inputs and decide each: explain it, skip it (done), or refuse the run.

    A plain run needs a folder without normgrad records; ``overwrite``
    starts the folder's record afresh; ``resume`` continues it, folding in
    journals left by killed runs.  Inputs that are outputs of this folder
    are skipped.  Conflicts (files in the way, names of other inputs,
    other settings) raise one StoreError saying how many and the first one.
    ``gallery``: claim ``index.html`` and ``gallery/`` (see :func:`claim_gallery`).
    """
    if store.storage != "files":  # part of the settings: records made in the other storage are "other settings"
        settings = {**settings, "storage": store.storage}
    try:
        store.lock()
        store.clear_tmp()
        foreign = overwrite and store.has_foreign_manifest()
        state = Manifest.from_dict(None if foreign else store.read_manifest())
        old_journals = store.old_journals()
        if not resume and not overwrite and (state.entries or old_journals):
            raise StoreError(
                f"{store.out} already holds normgrad results; pass --resume to continue them, --overwrite to start afresh, "
                "or choose another --out"
            )
        for name in old_journals:
            state.apply(store.read_journal(name))
        owned = state.owned_files()
        out = os.path.realpath(store.out)
        inside = [place_inside(path, out) for path, _ in inputs]
        if state.gallery:  # the gallery's pictures are outputs too
            owned |= {own for own in inside if own is not None and PurePosixPath(own).parts[0] in (INDEX, GALLERY)}
        skipped = [(path, "it is an output normgrad wrote into --out; never explained again")
                   for (path, _), own in zip(inputs, inside) if own in owned]  # fmt: skip
        kept = [k for k, own in enumerate(inside) if own is None or own not in owned]
        names = output_names([inputs[k] for k in kept], files_of, reserved=[inside[k] for k in kept if inside[k]])
        planned = [(k, inputs[k][0], name, files_of(name)) for k, name in zip(kept, names)]
        if not resume:  # a fresh record; files of earlier entries stay normgrad's until this run rewrites them
            wanted = set(names)
            state.entries = {
                name: {"name": name, "status": "interrupted", "run": store.run, "files": sorted(entry_files(entry))}
                for name, entry in state.entries.items()
                if name in wanted
            }
        runs_settings = {run: info.get("settings") for run, info in state.runs.items()}
        owned = state.owned_files()
        work, done, conflicts = [], [], []
        for item in planned:
            decision = decide(store, state, runs_settings, owned, settings, *item, resume, overwrite)
            if decision == "done":
                done.append(item[2])
            elif isinstance(decision, Work):
                work.append(decision)
            else:
                conflicts.append(decision)
        if gallery:
            conflicts += gallery_conflicts(store, state, overwrite)
        if conflicts:
            more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
            raise StoreError(f"{conflicts[0]}{more}")
        if gallery:
            state.gallery = dict(GALLERY_CLAIM)
        state.runs[store.run] = {"settings": settings, "started": now(), "finished": None, "world": world, "host": socket.gethostname()}
        state.current = store.run
        store.write_manifest(state.to_dict())
        for name in old_journals:  # folded in (or discarded by --overwrite) and saved: never read again
            store.remove_journal(name)
    except OSError as error:
        store.unlock()
        raise fatal(error, store.out) from None
    except BaseException:
        store.unlock()
        raise
    return Plan(store.run, work, done, skipped, gallery)


def gallery_conflicts(store: OutputStore, state: Manifest, overwrite: bool) -> list[str]:
    """``index.html`` or ``gallery`` in the way and not normgrad's (refused unless ``overwrite``)."""
    if state.gallery or overwrite:
        return []
    return [
        f"{store.out / name} exists and normgrad did not write it (the gallery goes there); "
        "pass --no-gallery, --overwrite to replace it, or choose another --out"
        for name in (INDEX, GALLERY)
        if store.lstat(name) is not None
    ]


def claim_gallery(store: OutputStore, overwrite: bool = False) -> None:
    """Outside a run (``normgrad gallery``): record in the manifest that normgrad owns ``index.html`` and ``gallery/``.

    Holds the lock; refuses an ``index.html`` or ``gallery`` normgrad did
    not write unless ``overwrite``.  The manifest is rewritten only when
    the claim is new (journals of a killed run stay for ``--resume``).
    """
    try:
        manifest = store.read_manifest()
        if manifest is None:
            raise StoreError(f"{store.out} holds no {MANIFEST}: run normgrad explain ... --out {store.out} first")
        state = Manifest.from_dict(manifest)
        conflicts = gallery_conflicts(store, state, overwrite)
        if conflicts:
            raise StoreError(conflicts[0])
        if not state.gallery:
            manifest["gallery"] = dict(GALLERY_CLAIM)
            store.write_manifest(manifest)
    except OSError as error:
        raise fatal(error, store.out) from None


def decide(store: OutputStore, state: Manifest, runs_settings: dict, owned: set[str], settings: dict, index: int, path: str,
            name: str, files: list[str], resume: bool, overwrite: bool) -> Work | str:  # fmt: skip
    """``"done"``, a :class:`Work`, or a conflict message, for one planned input."""
    entry = state.entries.get(name)
    absolute = os.path.abspath(path)
    first = store.out / files[0]
    existing = [f for f in files if not store.in_shard(f) and store.lstat(f) is not None]
    if entry is not None and entry.get("input") and entry["input"].get("path") != absolute and not overwrite:
        return f"{first} belongs to another image ({entry.get('image')}); choose another --out, or pass --overwrite"
    if entry is not None and not resume and not overwrite:
        return (
            f"{path} was already explained into {store.out} ({first.name}); pass --resume to skip finished images, --overwrite to redo them"
        )
    if entry is not None and entry.get("status") == "ok" and resume:
        same_settings = runs_settings.get(entry.get("run")) == settings
        if not same_settings and not overwrite:
            return f"{first} was made with other settings than this run's; pass --overwrite to redo such images, or choose another --out"
        if same_settings and still_valid(store, entry, absolute):
            return "done"
    foreign = [f for f in existing if f not in owned]
    if foreign and not overwrite:
        return f"{store.out / foreign[0]} exists and normgrad did not write it; pass --overwrite to replace it, or choose another --out"
    return Work(index, path, name, files, existing)


def still_valid(store: OutputStore, entry: dict, absolute: str) -> bool:
    """The input is unchanged (path, size, mtime, ctime) and every output file has its recorded size (a map in a
    shard: the shard still holds its bytes)."""
    return identity(absolute) == entry.get("input") and store.outputs_intact(entry)


def place_inside(path: str, out: str) -> str | None:
    """``path``'s place inside ``out`` (both resolved), or ``None`` when it lies elsewhere."""
    real = os.path.realpath(path)
    return Path(os.path.relpath(real, out)).as_posix() if os.path.commonpath([real, out]) == out else None
