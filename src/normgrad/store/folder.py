"""The output folder itself: every write through directory descriptors (never outside OUT, never through a symlink), the lock.

:class:`OutputStore` is the one object a run writes through; what a run
plans (names, resume decisions) lives in :mod:`normgrad.store.plan`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import stat
import threading
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from normgrad.errors import NormGradError, did_you_mean
from normgrad.store import plan as planning
from normgrad.store.encode import encode_npy
from normgrad.store.folders import FolderCache
from normgrad.store.journal import JsonLines, dumps
from normgrad.store.layout import (
    GALLERY,
    INTERNAL,
    MANIFEST,
    OUTPUT_KINDS,
    OutputConflict,
    StoreError,
    classify,
    fatal,
    now,
    open_below,
    split_relative,
    unlink_quietly,
)
from normgrad.store.lock import take_lock
from normgrad.store.manifest import Manifest, parse_manifest
from normgrad.store.shards import SHARDS, STORAGES, ShardAppender, decode_map, read_range, shard_name, split_npy

if TYPE_CHECKING:
    from normgrad.store.plan import Plan, Work


class OutputStore:
    """Writes into one output folder, never outside it and never through a symlink; thread-safe.

    ``OutputStore(out, run, rank)`` attaches to a folder (creating it);
    :meth:`begin` (rank 0) takes the lock and plans the run, :meth:`finish`
    merges the run's journals into the manifest.  ``storage="shards"``
    writes the ``.npy`` maps into this rank's shard instead of a file each
    (:mod:`normgrad.store.shards`); every rank of a run uses the same storage.
    """

    def __init__(self, out: str | Path, run: str, rank: int = 0, storage: str = "files") -> None:
        if storage not in STORAGES:
            raise NormGradError(f"unknown storage {storage!r}{did_you_mean(str(storage), STORAGES)}; valid: {', '.join(STORAGES)}")
        self.out, self.run, self.rank, self.storage = Path(out), run, rank, storage
        self._counter = itertools.count()
        self._lock_fd: int | None = None
        self._shard: ShardAppender | None = None
        self._shard_lock = threading.Lock()
        try:
            if self.out.exists() and not self.out.is_dir():
                raise StoreError(f"--out {self.out} is a file; give a folder")
            self.out.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.out, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
            self._internal = self._open_dir(INTERNAL, create=True)
            self._tmp = self._open_dir(f"{INTERNAL}/tmp", create=True)
            self._journals = self._open_dir(f"{INTERNAL}/journal", create=True)
        except OSError as error:
            raise fatal(error, self.out) from None
        self._folders = FolderCache(self.fd, self.out)
        self.journal = JsonLines(f"{run}.rank{rank}.jsonl", dir_fd=self._journals)

    # -- low level

    def _open_dir(self, relative: str, create: bool) -> int:
        """A folder below OUT, each component opened with O_NOFOLLOW (created if ``create``)."""
        return open_below(self.fd, relative, self.out, create)

    def _existing_parent(self, relative: str) -> tuple[int, str] | None:
        """An fd of the folder holding ``relative`` (the caller closes it) and the entry's name; ``None`` if that folder
        is absent or not a plain folder below OUT."""
        parent, name = split_relative(relative)
        try:
            return (self._open_dir(parent, create=False) if parent else os.dup(self.fd)), name
        except (OSError, OutputConflict):
            return None

    def lstat(self, relative: str) -> os.stat_result | None:
        found = self._existing_parent(relative)
        if found is None:
            return None
        fd, name = found
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None
        finally:
            os.close(fd)

    def file_size(self, relative: str) -> int | None:
        """The byte size of a plain file at ``relative`` (``None``: absent, a symlink or not a file)."""
        info = self.lstat(relative)
        return info.st_size if info is not None and stat.S_ISREG(info.st_mode) else None

    def write(self, relative: str, data: bytes, *, replace: bool = False) -> int:
        """Atomically write ``data`` to ``OUT/relative``; returns its size.

        An existing entry there is replaced only if ``replace`` (folders never).
        Raises :class:`OutputConflict` for that one file, :class:`StoreError`
        when the folder cannot be written at all (full, read-only).
        """
        parent, name = split_relative(relative)
        try:
            directory = self._folders.dup(parent) if parent else os.dup(self.fd)
        except OSError as error:
            raise classify(error, self.out / relative) from None
        temporary = f"{self.run}.{self.rank}.{os.getpid()}.{next(self._counter)}.tmp"
        try:
            try:
                existing = os.stat(name, dir_fd=directory, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None and (stat.S_ISDIR(existing.st_mode) or not replace):
                what = "a folder" if stat.S_ISDIR(existing.st_mode) else "a symlink" if stat.S_ISLNK(existing.st_mode) else "a file"
                raise OutputConflict(f"{self.out / relative} exists ({what} normgrad did not write); pass --overwrite to replace it")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=self._tmp)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(temporary, name, src_dir_fd=self._tmp, dst_dir_fd=directory)
            return len(data)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=self._tmp)
            raise classify(error, self.out / relative) from None
        finally:
            os.close(directory)

    def save(self, work: Work, files: dict[str, Any], record: dict) -> None:
        """Commit one image: a claim of its files in the journal, each file written atomically, then its record.

        A record in a journal therefore always means complete files, and a
        claim makes the files normgrad's even if the run dies halfway.  Only
        ``work.files`` can be written and only ``work.replace`` replaced.
        ``files`` maps each file to its bytes; a ``.npy`` map may be given as
        its bytes or as the NumPy array (encoded here, its record's
        ``npy_bytes`` filled in).  With ``storage="shards"`` the ``.npy`` maps
        go into this rank's shard instead, and the record's output says where
        (:mod:`normgrad.store.shards`).  Thread-safe; raises
        :class:`OutputConflict` (skip this image) or :class:`StoreError` (stop
        the run); ``ValueError`` for a record strict JSON refuses (NaN),
        before anything is written.
        """
        dumps(record)
        unplanned = sorted(set(files) - set(work.files))
        if unplanned:
            raise OutputConflict(f"{unplanned[0]} is not among the files planned for {work.name}")
        maps = {relative: split_npy(data) for relative, data in files.items() if self.in_shard(relative)}
        arrays = {r for r, data in files.items() if r not in maps and not isinstance(data, (bytes, bytearray, memoryview))}
        if arrays:
            files = {relative: encode_npy(data) if relative in arrays else data for relative, data in files.items()}
            record = with_npy_bytes(record, {relative: len(files[relative]) for relative in arrays})
        claimed = [f for f in work.files if not self.in_shard(f)] + ([shard_name(self.run, self.rank)] if maps else [])
        self.journal.append({"type": "claim", "run": self.run, "name": work.name, "image": record.get("image"), "files": claimed})
        for relative, data in files.items():
            if relative not in maps:
                self.write(relative, data, replace=relative in work.replace)
        if maps:
            record = self._in_shard(record, maps)
        self.journal.append(record)

    def outputs_intact(self, entry: dict) -> bool:
        """Every output of a record is still there as recorded: each file with its byte size, each map's range in its
        shard (shards only grow: a shard at least that long)."""
        for output in entry.get("outputs", []):
            for kind in OUTPUT_KINDS:
                if kind in output and self.file_size(output[kind]) != output.get(f"{kind}_bytes"):
                    return False
            if "shard" in output and (self.file_size(output["shard"]) or 0) < output.get("offset", 0) + output.get("bytes", 0):
                return False
        return True

    def in_shard(self, relative: str) -> bool:
        """``relative`` names a map this store keeps in its shard, not in a file of its own."""
        return self.storage == "shards" and relative.endswith(".npy")

    def _in_shard(self, record: dict, maps: dict) -> dict:
        """Append the maps to this rank's shard; the record with each ``npy`` output replaced by where its bytes are."""
        shard = self._appender()
        try:
            where = {relative: shard.append(array) for relative, array in maps.items()}
        except OSError as error:
            raise classify(error, self.out / shard_name(self.run, self.rank)) from None
        outputs = []
        for output in record.get("outputs", []):
            placed = where.get(output.get("npy"))
            if placed is not None:
                output = (
                    {k: v for k, v in output.items() if k not in ("npy", "npy_bytes")} | {"shard": shard_name(self.run, self.rank)} | placed
                )
            outputs.append(output)
        return {**record, "outputs": outputs}

    def _appender(self) -> ShardAppender:
        with self._shard_lock:
            if self._shard is None:
                relative = shard_name(self.run, self.rank)
                try:
                    self._shard = ShardAppender(self._open_dir(SHARDS, create=True), PurePosixPath(relative).name)
                except OutputConflict as conflict:
                    raise StoreError(str(conflict)) from None
                except OSError as error:
                    raise fatal(error, self.out / relative) from None
            return self._shard

    def read_map(self, output: dict, limit: int | None = None) -> Any:
        """The map of one output of a record, from its ``.npy`` file or its shard, checked (:func:`decode_map`)."""
        if output.get("shard") is not None:
            if limit is not None and output.get("bytes", 0) > limit:
                raise NormGradError(f"{self.out / output['shard']}: a map of {output['bytes']} bytes is over the limit of {limit}")
            found = self._existing_parent(output["shard"])
            data = None
            if found is not None:
                directory, name = found
                try:
                    data = read_range(directory, name, output["offset"], output["bytes"])
                finally:
                    os.close(directory)
            return decode_map(data, output, self.out / output["shard"])
        if output.get("npy") is None:
            raise NormGradError("its maps were not written (--no-npy)")
        return decode_map(self.read(output["npy"], limit=limit), output, self.out / output["npy"])

    def read_manifest(self) -> dict | None:
        """The manifest, ``None`` if absent; a StoreError if it is not one of ours (or damaged)."""
        try:
            fd = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StoreError(f"{self.out / MANIFEST} is not a plain file ({error.strerror}); pass --overwrite to replace it") from None
        with os.fdopen(fd, "rb") as file:
            return parse_manifest(file.read(), self.out / MANIFEST)

    def write_manifest(self, manifest: dict) -> None:
        self.write(MANIFEST, (json.dumps(manifest, indent=1, allow_nan=False, ensure_ascii=False) + "\n").encode(), replace=True)

    # -- rank 0: lock, plan, merge

    def lock(self) -> None:
        """Take the folder's exclusive lock (non-blocking); a StoreError naming the holder if another run has it."""
        self._lock_fd = take_lock(self._internal, self.out, self.run)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def begin(
        self,
        settings: dict,
        inputs: Sequence[tuple[str, str]],
        files_of: Callable[[str], list[str]],
        *,
        resume: bool,
        overwrite: bool,
        world: int = 1,
        gallery: bool = False,
    ) -> Plan:
        """Lock the folder, name the ``(path, root)`` inputs and decide each (see :func:`normgrad.store.plan.begin`)."""
        return planning.begin(self, settings, inputs, files_of, resume=resume, overwrite=overwrite, world=world, gallery=gallery)

    def claim_gallery(self, overwrite: bool = False) -> None:
        """Outside a run (``normgrad gallery``): record that normgrad owns ``index.html`` and ``gallery/``
        (see :func:`normgrad.store.plan.claim_gallery`)."""
        planning.claim_gallery(self, overwrite)

    def current_state(self) -> Manifest:
        """The manifest with the journals of unfinished runs folded in (read only: nothing is merged or deleted)."""
        state = Manifest.from_dict(self.read_manifest())
        for name in self.journals():
            state.apply(self.read_journal(name))
        return state

    def read(self, relative: str, limit: int | None = None) -> bytes | None:
        """The bytes of a plain file below OUT (``None``: absent, a symlink, not a file, or over ``limit`` bytes).

        No symlink is followed, in the folders above it either.
        """
        found = self._existing_parent(relative)
        if found is None:
            return None
        directory, name = found
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=directory)
        except OSError:
            return None
        finally:
            os.close(directory)
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode) or (limit is not None and info.st_size > limit):
                return None
            return file.read()

    def files_below(self, relative: str) -> set[str]:
        """The plain files below the folder ``relative`` (paths relative to OUT); no symlink is followed."""
        found: set[str] = set()
        try:
            fd = self._open_dir(relative, create=False)
        except (OSError, OutputConflict):
            return found
        try:
            with os.scandir(fd) as entries:
                listed = [(e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False)) for e in entries]
        finally:
            os.close(fd)
        for name, is_dir, is_file in listed:
            if is_dir:
                found |= self.files_below(f"{relative}/{name}")
            elif is_file:
                found.add(f"{relative}/{name}")
        return found

    def remove(self, relative: str) -> None:
        """Delete a file normgrad keeps below ``gallery/`` (stale data chunks); a symlink is removed as a link."""
        parent, name = split_relative(relative)
        if PurePosixPath(relative).parts[0] != GALLERY:
            raise OutputConflict(f"{relative!r}: normgrad only ever deletes its own gallery files")
        try:
            directory = self._open_dir(parent, create=False)
        except (OSError, OutputConflict):
            return
        try:
            info = os.stat(name, dir_fd=directory, follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode):
                os.unlink(name, dir_fd=directory)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise classify(error, self.out / relative) from None
        finally:
            os.close(directory)

    def finish(self, world: int) -> Manifest:
        """Merge this run's journals (all ranks; other runs' are never read here) into the manifest; returns it."""
        try:
            state = Manifest.from_dict(self.read_manifest())
            for rank in range(world):
                state.apply(JsonLines(f"{self.run}.rank{rank}.jsonl", dir_fd=self._journals).read(), only_run=self.run)
            state.runs.setdefault(self.run, {})["finished"] = now()
            state.current = self.run
            self.write_manifest(state.to_dict())
            for rank in range(world):
                unlink_quietly(f"{self.run}.rank{rank}.jsonl", self._journals)
        except OSError as error:
            raise fatal(error, self.out) from None
        return state

    def close(self) -> None:
        self.journal.close()
        self.unlock()
        with self._shard_lock:
            if self._shard is not None:
                self._shard.close()
                self._shard = None
        self._folders.close()
        for fd in (self._tmp, self._journals, self._internal, self.fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the journals and the temporary folder

    def journals(self) -> list[str]:
        """The journals in ``.normgrad/journal`` (of this run and of killed ones), sorted (oldest run first)."""
        return sorted(n for n in os.listdir(self._journals) if n.endswith(".jsonl"))

    def read_journal(self, name: str) -> list[dict]:
        """The lines of one journal that parse (a line torn by a kill is skipped)."""
        return JsonLines(name, dir_fd=self._journals).read()

    def remove_journal(self, name: str) -> None:
        unlink_quietly(name, self._journals)

    def old_journals(self) -> list[str]:
        """Journals of earlier runs (killed before their merge), oldest first."""
        return [n for n in self.journals() if not n.startswith(self.run + ".")]

    def has_foreign_manifest(self) -> bool:
        """A ``summary.json`` that is not a normgrad manifest (another program's, or damaged)."""
        try:
            self.read_manifest()
        except StoreError:
            return True
        return False

    def clear_tmp(self) -> None:
        """Remove what killed runs left half-written in ``.normgrad/tmp``."""
        for name in os.listdir(self._tmp):
            unlink_quietly(name, self._tmp)


def with_npy_bytes(record: dict, sizes: dict[str, int]) -> dict:
    """``record`` with the ``npy_bytes`` of the outputs whose ``npy`` file is in ``sizes``."""
    outputs = [o | {"npy_bytes": sizes[o["npy"]]} if o.get("npy") in sizes else o for o in record.get("outputs", [])]
    return {**record, "outputs": outputs} if "outputs" in record else record
