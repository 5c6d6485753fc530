"""The output folder of ``normgrad explain``: names, safe writes, one run at a time, a manifest, resumable records.

Layout (format ``normgrad-explain``, version 1)::

    OUT/summary.json                        the manifest: each run's settings, one entry per image
    OUT/<name>.png, OUT/<name>.npy          overlay and float32 map of an image (--combine none:
                                            <name>_<layer>.png/.npy per layer)
    OUT/.normgrad/lock                      held with flock(2) by the run writing into OUT
    OUT/.normgrad/journal/<run>.rank<R>.jsonl   what run <run> (rank R) has done so far
    OUT/.normgrad/tmp/                      files being written, renamed into place when complete
    OUT/index.html, OUT/gallery/            the gallery page and its data (:mod:`normgrad.gallery`), when the
                                            manifest's ``gallery`` entry says normgrad owns them

**Names** (:func:`output_names`): an image's name is its path relative to its
*root* without the suffix (``photos/a/cat.jpg`` found in ``photos/`` → ``a/cat``).
The root of a folder argument is the folder, of a glob its directory part
before the first wildcard, and of the files given by name their deepest
common folder.  Names that would collide (compared case-insensitively, also
with a folder of the same name or with an input file) keep their suffix
(``cat.jpg``, ``cat.png`` → ``cat.jpg.png``, ``cat.png.png``); any still
colliding get ``~2``, ``~3``, ... in input order.  The top-level entries
normgrad keeps for itself (:data:`RESERVED`: ``summary.json``, ``index.html``,
``gallery/``, ``.normgrad/``, compared case-insensitively) are never an
output or a folder above one: such a name gets a leading ``_``
(``gallery/cat.jpg`` → ``_gallery/cat.jpg``).

**Safety**: every file is written to ``.normgrad/tmp`` and renamed into place
(``os.replace``), so a file is either absent or complete; directories are
opened without following symbolic links and names never leave ``OUT``; a
file normgrad did not write (one no manifest entry or journal claims) is
never replaced without ``--overwrite`` — a symlink in the way is replaced as
a link, never written through — and an input file is never replaced at all.
The gallery (``index.html`` and ``gallery/``) is claimed as a whole: the
manifest records that normgrad owns it before any of its files is written, and
a run refuses to start over an ``index.html`` or ``gallery`` it did not write
(unless ``--overwrite``).

**Records**: a run appends JSON lines to its own journal: a header
(``{"type": "run", "run", "rank", "world", "settings", ...}``), then per
image a ``claim`` (the files it is about to write) and an ``image``
(success) or ``failed`` record.  Every line is one ``write`` on an
``O_APPEND`` file and the reader skips torn lines, so a line cut by a kill
never swallows the next.  At the end rank 0 merges the journals of *its*
run (the run id fences off stale ones) into ``summary.json``; journals left
by a killed run are merged, entry by entry and checked, by the next run.

**Resume** (``--resume``): an image is skipped when its entry succeeded with
the same settings, for the same input path, the input's size, mtime and
ctime (``os.stat``; a replaced file changes its ctime even when its mtime is
preserved) are those recorded, and every output file exists with its
recorded byte size.  Otherwise it is redone: failed and interrupted images
are retried, changed inputs and deleted or truncated outputs are redone.
An image whose name belongs to another input, or whose entry was made with
other settings, stops the run unless ``--overwrite`` is given.

**Concurrency**: rank 0 holds an exclusive ``flock`` on ``.normgrad/lock``
from planning to the merge, so a second run into the same folder stops at
once; under ``torchrun`` the other ranks write only what rank 0 planned for
them, into their own journals.
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import json
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from normgrad.errors import NormGradError

FORMAT, VERSION = "normgrad-explain", 1
MANIFEST = "summary.json"
INTERNAL = ".normgrad"
INDEX = "index.html"  # the gallery page
GALLERY = "gallery"  # the gallery's scripts, data and pictures
RESERVED = (MANIFEST, INTERNAL, INDEX, GALLERY)  # top-level entries no output may take or lie below
_RESERVED_KEYS = {name.casefold() for name in RESERVED}
GALLERY_CLAIM = {"index": INDEX, "folder": GALLERY}  # the manifest's "gallery" entry: normgrad owns both
OUTPUT_KINDS = ("png", "npy")  # the files an output may have (a record lists those written, with their byte sizes)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FATAL_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO, errno.EXDEV}


class StoreError(NormGradError):
    """A run-level problem with the output folder (locked, read-only, full, not a folder): the run stops."""


class OutputConflict(NormGradError):
    """One output cannot be written safely (a file in the way): that image is skipped."""


def dumps(record: Any) -> str:
    """Strict JSON (NaN and infinities refused), one line."""
    return json.dumps(record, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def new_run_id() -> str:
    """A sortable, unique run id: UTC time and 8 random hex digits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


# ----------------------------------------------------------------------------- JSON lines


class JsonLines:
    """An append-only JSON-lines file: one ``write`` per line on ``O_APPEND``; a torn last line is closed off first.

    Thread-safe.  ``read`` skips lines that do not parse (cut by a kill).
    """

    def __init__(self, path: str | Path, *, dir_fd: int | None = None) -> None:
        self.path, self.dir_fd = path, dir_fd
        self._fd: int | None = None
        self._lock = threading.Lock()

    def append(self, record: Any) -> None:
        line = (dumps(record) + "\n").encode()
        with self._lock:
            if self._fd is None:
                flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
                self._fd = os.open(self.path, flags, 0o644, dir_fd=self.dir_fd)
                size = os.fstat(self._fd).st_size
                if size and os.pread(self._fd, 1, size - 1) != b"\n":
                    os.write(self._fd, b"\n")  # close off a line torn by an earlier kill
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def read(self) -> list[Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "rb") as file:
            data = file.read()
        records = []
        for line in data.split(b"\n"):
            try:
                records.append(json.loads(line))
            except ValueError:  # empty, or cut by an interruption
                continue
        return records

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- single files


def atomic_write(path: str | Path, data: bytes, *, replace: bool = False) -> None:
    """Write ``path`` through a temporary file and ``os.replace``; an existing file is replaced only if ``replace``.

    A symlink at ``path`` is replaced as a link (its target is never written);
    a folder there is an error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if stat.S_ISDIR(existing.st_mode):
            raise NormGradError(f"{path} is a folder; give a file name")
        if not replace:
            raise NormGradError(f"{path} already exists; pass --overwrite to replace it or choose another name")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- names


def output_names(inputs: Sequence[tuple[str, str]], files_of: Callable[[str], list[str]], reserved: Iterable[str] = ()) -> list[str]:
    """Collision-free names for ``(path, root)`` pairs (see the module docstring); ``files_of(name)`` lists a name's files.

    ``reserved`` are relative file paths no output may take (input files
    inside the output folder).  Deterministic: the same inputs give the same
    names on every rank.
    """
    relative = [PurePosixPath(Path(os.path.relpath(os.path.abspath(p), os.path.abspath(r))).as_posix()) for p, r in inputs]
    taken = {r.casefold() for r in reserved} | _RESERVED_KEYS
    names = [str(rel.with_suffix("")) if rel.suffix else str(rel) for rel in relative]
    for i in _clashing(names, files_of, taken):  # all of a clashing group keep their suffix
        names[i] = str(relative[i])
    files_used: set[str] = set(taken)
    dirs_used: set[str] = set()
    for i, name in enumerate(names):  # last resort, in input order: ~2, ~3, ...
        if _reserved(_keys(name, files_of)[0]):
            name = "_" + name  # below (or at) a reserved top-level entry: ~k alone could never move it out
        for k in itertools.count(1):
            candidate = name if k == 1 else f"{name}~{k}"
            files, dirs = _keys(candidate, files_of)
            if not (files & (files_used | dirs_used) or dirs & files_used or _reserved(files)):
                break
        names[i] = candidate
        files_used |= files
        dirs_used |= dirs
    return names


def _keys(name: str, files_of: Callable[[str], list[str]]) -> tuple[set[str], set[str]]:
    """A name's files and the folders above them, casefolded (case-insensitive file systems)."""
    files = {file.casefold() for file in files_of(name)}
    dirs = {str(parent) for file in files for parent in PurePosixPath(file).parents if str(parent) != "."}
    return files, dirs


def _reserved(files: set[str]) -> bool:
    """Some file is, or lies below, a reserved top-level entry (casefolded names)."""
    return any(PurePosixPath(f).parts[0].casefold() in _RESERVED_KEYS for f in files)


def _clashing(names: list[str], files_of: Callable[[str], list[str]], taken: set[str]) -> set[int]:
    """Indices whose files collide with another's files or folders, a taken path, or a reserved entry."""
    file_owners: dict[str, set[int]] = {}
    dir_owners: dict[str, set[int]] = {}
    clashing = set()
    for i, name in enumerate(names):
        files, dirs = _keys(name, files_of)
        if files & taken or _reserved(files):
            clashing.add(i)
        for f in files:
            file_owners.setdefault(f, set()).add(i)
        for d in dirs:
            dir_owners.setdefault(d, set()).add(i)
    for key, owners in file_owners.items():
        if len(owners) > 1 or key in dir_owners:
            clashing |= owners | dir_owners.get(key, set())
    return clashing


# ----------------------------------------------------------------------------- the folder


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


class OutputStore:
    """Writes into one output folder, never outside it and never through a symlink; thread-safe.

    ``OutputStore(out, run, rank)`` attaches to a folder (creating it);
    :meth:`begin` (rank 0) takes the lock and plans the run, :meth:`finish`
    merges the run's journals into the manifest.
    """

    def __init__(self, out: str | Path, run: str, rank: int = 0) -> None:
        self.out, self.run, self.rank = Path(out), run, rank
        self._counter = itertools.count()
        self._lock_fd: int | None = None
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
        self.journal = JsonLines(f"{run}.rank{rank}.jsonl", dir_fd=self._journals)

    # -- low level

    def _open_dir(self, relative: str, create: bool) -> int:
        """A folder below OUT, each component opened with O_NOFOLLOW (created if ``create``)."""
        fd = os.dup(self.fd)
        try:
            for part in PurePosixPath(relative).parts:
                if part in ("..", "/", ""):
                    raise OutputConflict(f"{relative!r} would leave the output folder")
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as error:
                    if error.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise OutputConflict(
                            f"{self.out / relative} is not a plain folder (a symlink or a file); normgrad never writes through it"
                        ) from None
                    raise
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _existing_parent(self, relative: str) -> tuple[int, str] | None:
        """An fd of the folder holding ``relative`` (the caller closes it) and the entry's name; ``None`` if that folder
        is absent or not a plain folder below OUT."""
        parent, name = _split(relative)
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
        parent, name = _split(relative)
        try:
            directory = self._open_dir(parent, create=True) if parent else os.dup(self.fd)
        except OSError as error:
            raise _classify(error, self.out / relative) from None
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
            raise _classify(error, self.out / relative) from None
        finally:
            os.close(directory)

    def save(self, work: Work, files: dict[str, bytes], record: dict) -> None:
        """Commit one image: a claim of its files in the journal, each file written atomically, then its record.

        A record in a journal therefore always means complete files, and a
        claim makes the files normgrad's even if the run dies halfway.  Only
        ``work.files`` can be written and only ``work.replace`` replaced.
        Thread-safe; raises :class:`OutputConflict` (skip this image) or
        :class:`StoreError` (stop the run); ``ValueError`` for a record strict
        JSON refuses (NaN), before anything is written.
        """
        dumps(record)
        unplanned = sorted(set(files) - set(work.files))
        if unplanned:
            raise OutputConflict(f"{unplanned[0]} is not among the files planned for {work.name}")
        self.journal.append({"type": "claim", "run": self.run, "name": work.name, "image": record.get("image"), "files": work.files})
        for relative, data in files.items():
            self.write(relative, data, replace=relative in work.replace)
        self.journal.append(record)

    def read_manifest(self) -> dict | None:
        """The manifest, ``None`` if absent; a StoreError if it is not one of ours (or damaged)."""
        try:
            fd = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StoreError(f"{self.out / MANIFEST} is not a plain file ({error.strerror}); pass --overwrite to replace it") from None
        with os.fdopen(fd, "rb") as file:
            data = file.read()
        try:
            manifest = json.loads(data)
        except ValueError:
            manifest = None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise StoreError(
                f"{self.out / MANIFEST} is not a {FORMAT} manifest (another program's, or an older normgrad's); "
                "pass --overwrite to start the folder afresh, or choose another --out"
            )
        if manifest.get("version", 0) > VERSION:
            raise StoreError(f"{self.out / MANIFEST} was written by a newer normgrad (version {manifest['version']}); upgrade normgrad")
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        self.write(MANIFEST, (json.dumps(manifest, indent=1, allow_nan=False, ensure_ascii=False) + "\n").encode(), replace=True)

    # -- rank 0: lock, plan, merge

    def lock(self) -> None:
        """Take the folder's exclusive lock (non-blocking); a StoreError naming the holder if another run has it."""
        import fcntl

        fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644, dir_fd=self._internal)
        for attempt in range(5):  # a moment's patience: a starting run may be probing the lock (see precheck)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt < 4:
                    time.sleep(0.05)
        else:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StoreError(
                f"another normgrad run is writing into {self.out} ({holder or 'holder unknown'}); wait for it or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"run {self.run}, pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._lock_fd = fd

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
        """Lock the folder, name the ``(path, root)`` inputs and decide each: explain it, skip it (done), or refuse the run.

        A plain run needs a folder without normgrad records; ``overwrite``
        starts the folder's record afresh; ``resume`` continues it, folding in
        journals left by killed runs.  Inputs that are outputs of this folder
        are skipped.  Conflicts (files in the way, names of other inputs,
        other settings) raise one StoreError saying how many and the first one.
        ``gallery``: claim ``index.html`` and ``gallery/`` (see :meth:`claim_gallery`).
        """
        try:
            self.lock()
            self._clear_tmp()
            foreign = overwrite and self._foreign_manifest()
            state = Manifest.from_dict(None if foreign else self.read_manifest())
            old_journals = self._old_journals()
            if not resume and not overwrite and (state.entries or old_journals):
                raise StoreError(
                    f"{self.out} already holds normgrad results; pass --resume to continue them, --overwrite to start afresh, "
                    "or choose another --out"
                )
            for name in old_journals:
                state.apply(JsonLines(name, dir_fd=self._journals).read())
            owned = state.owned_files()
            out = os.path.realpath(self.out)
            inside = [_inside(path, out) for path, _ in inputs]
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
                    name: {"name": name, "status": "interrupted", "run": self.run, "files": sorted(_entry_files(entry))}
                    for name, entry in state.entries.items()
                    if name in wanted
                }
            runs_settings = {run: info.get("settings") for run, info in state.runs.items()}
            owned = state.owned_files()
            work, done, conflicts = [], [], []
            for item in planned:
                decision = _decide(self, state, runs_settings, owned, settings, *item, resume, overwrite)
                if decision == "done":
                    done.append(item[2])
                elif isinstance(decision, Work):
                    work.append(decision)
                else:
                    conflicts.append(decision)
            if gallery:
                conflicts += self._gallery_conflicts(state, overwrite)
            if conflicts:
                more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
                raise StoreError(f"{conflicts[0]}{more}")
            if gallery:
                state.gallery = dict(GALLERY_CLAIM)
            state.runs[self.run] = {"settings": settings, "started": _now(), "finished": None, "world": world, "host": socket.gethostname()}
            state.current = self.run
            self.write_manifest(state.to_dict())
            for name in old_journals:  # folded in (or discarded by --overwrite) and saved: never read again
                _unlink(name, self._journals)
        except OSError as error:
            self.unlock()
            raise fatal(error, self.out) from None
        except BaseException:
            self.unlock()
            raise
        return Plan(self.run, work, done, skipped, gallery)

    def _gallery_conflicts(self, state: Manifest, overwrite: bool) -> list[str]:
        """``index.html`` or ``gallery`` in the way and not normgrad's (refused unless ``overwrite``)."""
        if state.gallery or overwrite:
            return []
        return [
            f"{self.out / name} exists and normgrad did not write it (the gallery goes there); "
            "pass --no-gallery, --overwrite to replace it, or choose another --out"
            for name in (INDEX, GALLERY)
            if self.lstat(name) is not None
        ]

    def claim_gallery(self, overwrite: bool = False) -> None:
        """Outside a run (``normgrad gallery``): record in the manifest that normgrad owns ``index.html`` and ``gallery/``.

        Holds the lock; refuses an ``index.html`` or ``gallery`` normgrad did
        not write unless ``overwrite``.  The manifest is rewritten only when
        the claim is new (journals of a killed run stay for ``--resume``).
        """
        try:
            manifest = self.read_manifest()
            if manifest is None:
                raise StoreError(f"{self.out} holds no {MANIFEST}: run normgrad explain ... --out {self.out} first")
            state = Manifest.from_dict(manifest)
            conflicts = self._gallery_conflicts(state, overwrite)
            if conflicts:
                raise StoreError(conflicts[0])
            if not state.gallery:
                manifest["gallery"] = dict(GALLERY_CLAIM)
                self.write_manifest(manifest)
        except OSError as error:
            raise fatal(error, self.out) from None

    def current_state(self) -> Manifest:
        """The manifest with the journals of unfinished runs folded in (read only: nothing is merged or deleted)."""
        state = Manifest.from_dict(self.read_manifest())
        for name in sorted(n for n in os.listdir(self._journals) if n.endswith(".jsonl")):
            state.apply(JsonLines(name, dir_fd=self._journals).read())
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
        parent, name = _split(relative)
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
            raise _classify(error, self.out / relative) from None
        finally:
            os.close(directory)

    def finish(self, world: int) -> Manifest:
        """Merge this run's journals (all ranks; other runs' are never read here) into the manifest; returns it."""
        try:
            state = Manifest.from_dict(self.read_manifest())
            for rank in range(world):
                state.apply(JsonLines(f"{self.run}.rank{rank}.jsonl", dir_fd=self._journals).read(), only_run=self.run)
            state.runs.setdefault(self.run, {})["finished"] = _now()
            state.current = self.run
            self.write_manifest(state.to_dict())
            for rank in range(world):
                _unlink(f"{self.run}.rank{rank}.jsonl", self._journals)
        except OSError as error:
            raise fatal(error, self.out) from None
        return state

    def close(self) -> None:
        self.journal.close()
        self.unlock()
        for fd in (self._tmp, self._journals, self._internal, self.fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _foreign_manifest(self) -> bool:
        try:
            self.read_manifest()
        except StoreError:
            return True
        return False

    def _clear_tmp(self) -> None:
        for name in os.listdir(self._tmp):
            _unlink(name, self._tmp)

    def _old_journals(self) -> list[str]:
        """Journals of earlier runs (killed before their merge), oldest first."""
        return sorted(n for n in os.listdir(self._journals) if n.endswith(".jsonl") and not n.startswith(self.run + "."))


def _decide(store: OutputStore, state: Manifest, runs_settings: dict, owned: set[str], settings: dict, index: int, path: str,
            name: str, files: list[str], resume: bool, overwrite: bool) -> Work | str:  # fmt: skip
    """``"done"``, a :class:`Work`, or a conflict message, for one planned input."""
    entry = state.entries.get(name)
    absolute = os.path.abspath(path)
    first = store.out / files[0]
    existing = [f for f in files if store.lstat(f) is not None]
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
        if same_settings and _still_valid(store, entry, absolute):
            return "done"
    foreign = [f for f in existing if f not in owned]
    if foreign and not overwrite:
        return f"{store.out / foreign[0]} exists and normgrad did not write it; pass --overwrite to replace it, or choose another --out"
    return Work(index, path, name, files, existing)


def _still_valid(store: OutputStore, entry: dict, absolute: str) -> bool:
    """The input is unchanged (path, size, mtime, ctime) and every output file has its recorded size."""
    if identity(absolute) != entry.get("input"):
        return False
    for output in entry.get("outputs", []):
        for kind in OUTPUT_KINDS:
            if kind in output and store.file_size(output[kind]) != output.get(f"{kind}_bytes"):
                return False
    return True


def precheck(out: str | Path) -> None:
    """Read-only checks before a model loads: OUT is a folder (or can be made), writable, and no run holds its lock."""
    import fcntl

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} is a file; give a folder")
    existing = next(p for p in [out, *out.absolute().parents] if p.exists())
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise StoreError(f"cannot write into {out}: the file system is read-only")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write into {out}: permission denied")
    try:
        fd = os.open(out / INTERNAL / "lock", os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
        raise StoreError(
            f"another normgrad run is writing into {out} ({holder or 'holder unknown'}); wait for it or choose another --out"
        ) from None
    finally:
        os.close(fd)


def identity(path: str | Path, info: os.stat_result | None = None) -> dict | None:
    """An input's identity: absolute path, byte size, mtime and ctime in ns (``info``: a stat of the bytes actually read)."""
    try:
        info = info or os.stat(path)
    except OSError:
        return None
    return {"path": os.path.abspath(path), "bytes": info.st_size, "mtime_ns": info.st_mtime_ns, "ctime_ns": info.st_ctime_ns}


@dataclass
class Manifest:
    """The folder's state: runs (id → settings, times) and entries (name → the latest record of that image)."""

    runs: dict[str, dict] = field(default_factory=dict)
    entries: dict[str, dict] = field(default_factory=dict)
    current: str | None = None
    gallery: dict | None = None  # GALLERY_CLAIM when normgrad owns index.html and gallery/

    @classmethod
    def from_dict(cls, data: dict | None) -> Manifest:
        if not data:
            return cls()
        entries = {}
        for status, key in (("ok", "images"), ("failed", "failed"), ("interrupted", "interrupted")):
            for entry in data.get(key, []):
                entries[entry["name"]] = {**entry, "status": status}
        return cls(dict(data.get("runs", {})), entries, data.get("run"), data.get("gallery"))

    def apply(self, lines: Iterable[dict], only_run: str | None = None) -> None:
        """Fold journal lines in: a claim marks the image interrupted (its files owned), a record replaces the entry."""
        for line in lines:
            if not isinstance(line, dict) or (only_run is not None and line.get("run") != only_run):
                continue
            kind, run = line.get("type"), line.get("run")
            if kind == "run":
                self.runs.setdefault(run, {k: line.get(k) for k in ("settings", "started", "world", "host")} | {"finished": None})
                continue
            name = line.get("name")
            if not isinstance(name, str):
                continue
            previous = self.entries.get(name, {})
            kept = sorted(_entry_files(previous) | set(line.get("files", [])))
            if kind == "claim":
                self.entries[name] = {**previous, "name": name, "status": "interrupted", "run": run, "files": kept,
                                      "image": line.get("image", previous.get("image"))}  # fmt: skip
            elif kind == "image":
                record = {k: v for k, v in line.items() if k != "type"}
                self.entries[name] = {**record, "status": "ok"}
            elif kind == "failed":
                record = {k: v for k, v in line.items() if k != "type"}
                self.entries[name] = {**record, "status": "failed", "files": kept}

    def owned_files(self) -> set[str]:
        files: set[str] = set()
        for entry in self.entries.values():
            files |= _entry_files(entry)
        return files

    def to_dict(self) -> dict:
        referenced = {e.get("run") for e in self.entries.values()} | {self.current}
        runs = {run: info for run, info in self.runs.items() if run in referenced}
        current = runs.get(self.current, {}).get("settings") or {}
        by_status: dict[str, list[dict]] = {"ok": [], "failed": [], "interrupted": []}
        for name in sorted(self.entries):
            entry = dict(self.entries[name])
            by_status[entry.pop("status", "ok")].append(entry)
        for entry in by_status["failed"]:
            entry.setdefault("path", entry.get("image"))
        return {
            "format": FORMAT,
            "version": VERSION,
            "run": self.current,
            **{key: current.get(key) for key in ("model", "method", "default", "layers", "combine", "lr", "steps")},
            "settings": current,
            "runs": runs,
            "images": by_status["ok"],
            "failed": by_status["failed"],
            "interrupted": by_status["interrupted"],
            **({"gallery": self.gallery} if self.gallery else {}),
        }


def _entry_files(entry: dict) -> set[str]:
    files = set(entry.get("files", []))
    for output in entry.get("outputs", []):
        files |= {output.get("png"), output.get("npy")} - {None}
    return files


# ----------------------------------------------------------------------------- helpers


def _inside(path: str, out: str) -> str | None:
    """``path``'s place inside ``out`` (both resolved), or ``None`` when it lies elsewhere."""
    real = os.path.realpath(path)
    return Path(os.path.relpath(real, out)).as_posix() if os.path.commonpath([real, out]) == out else None


def _split(relative: str) -> tuple[str, str]:
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or not path.name:
        raise OutputConflict(f"output name {relative!r} would leave the output folder")
    return ("/".join(path.parts[:-1]), path.name)


def _unlink(name: str, dir_fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _classify(error: OSError, path: Path) -> NormGradError:
    """Full, read-only or forbidden folders stop the run; other errors (a name too long, ...) skip one image."""
    if error.errno in _FATAL_ERRNOS:
        return fatal(error, path)
    return OutputConflict(f"cannot write {path}: {error.strerror or error}")


def fatal(error: OSError, path: Path) -> StoreError:
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded", errno.EROFS: "the file system is read-only",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EXDEV: "a subfolder is another file system"}.get(error.errno, error.strerror or str(error))  # fmt: skip
    return StoreError(f"cannot write into {path}: {reason}")


def encode_npy(array: Any) -> bytes:
    """An array as ``.npy`` bytes."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# zlib level 1 with the run-length strategy on Pillow's adaptively filtered rows: on photo overlays 3.7x faster
# to encode than Pillow's default (level 6) for 3 % larger files (docs/benchmarks.md, "PNG compression")
PNG_COMPRESS_LEVEL, PNG_COMPRESS_TYPE = 1, 3  # 3 = zlib.Z_RLE


def encode_png(image: Any, compress_level: int = PNG_COMPRESS_LEVEL, compress_type: int = PNG_COMPRESS_TYPE) -> bytes:
    """A ``PIL.Image`` as PNG bytes (lossless at any level; the level and zlib strategy trade time for size)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level, compress_type=compress_type)
    return buffer.getvalue()
