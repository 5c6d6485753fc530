"""The output folder's fixed names, its two kinds of error, and the small path and time helpers every part shares."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path, PurePosixPath

from normgrad.errors import NormGradError

FORMAT, VERSION = "normgrad-explain", 1
MANIFEST = "summary.json"
INTERNAL = ".normgrad"
INDEX = "index.html"  # the gallery page
GALLERY = "gallery"  # the gallery's scripts, data and pictures
RESERVED = (MANIFEST, INTERNAL, INDEX, GALLERY)  # top-level entries no output may take or lie below
RESERVED_KEYS = {name.casefold() for name in RESERVED}
GALLERY_CLAIM = {"index": INDEX, "folder": GALLERY}  # the manifest's "gallery" entry: normgrad owns both
OUTPUT_KINDS = ("png", "jpg", "npy")  # the files an output may have (a record lists those written, with their byte sizes)
OVERLAY_KINDS = ("png", "jpg")  # an output has at most one overlay
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
FATAL_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO, errno.EXDEV}


class StoreError(NormGradError):
    """A run-level problem with the output folder (locked, read-only, full, not a folder, damaged records): the run stops."""


class OutputConflict(NormGradError):
    """One output cannot be written safely (a file in the way): that image is skipped."""


def split_relative(relative: str) -> tuple[str, str]:
    """``a/b/c.png`` → ``("a/b", "c.png")``; an absolute path or one with ``..`` would leave the folder: refused."""
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or not path.name:
        raise OutputConflict(f"output name {relative!r} would leave the output folder")
    return ("/".join(path.parts[:-1]), path.name)


def open_below(fd: int, relative: str, out: Path, create: bool = False) -> int:
    """A folder below the folder ``fd`` (shown as ``out``), each component opened with O_NOFOLLOW (created if ``create``).

    The caller closes the returned descriptor.  A symlink or a file on the way is an :class:`OutputConflict`.
    """
    fd = os.dup(fd)
    try:
        for part in PurePosixPath(relative).parts:
            if part in ("..", "/", ""):
                raise OutputConflict(f"{relative!r} would leave the output folder")
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OutputConflict(
                        f"{out / relative} is not a plain folder (a symlink or a file); normgrad never writes through it"
                    ) from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def unlink_quietly(name: str, dir_fd: int) -> None:
    """Remove ``name`` in the folder ``dir_fd``; already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def now() -> str:
    """The UTC time, to the second, as the manifest records it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def classify(error: OSError, path: Path) -> NormGradError:
    """Full, read-only or forbidden folders stop the run; other errors (a name too long, ...) skip one image."""
    if error.errno in FATAL_ERRNOS:
        return fatal(error, path)
    return OutputConflict(f"cannot write {path}: {error.strerror or error}")


def fatal(error: OSError, path: Path) -> StoreError:
    """The run-level error for an ``OSError`` while writing into ``path``, in words."""
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded", errno.EROFS: "the file system is read-only",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EXDEV: "a subfolder is another file system"}.get(error.errno, error.strerror or str(error))  # fmt: skip
    return StoreError(f"cannot write into {path}: {reason}")


def overlay_of(output: dict) -> str | None:
    """An output's overlay file (``png`` or ``jpg``, relative to OUT), or None (written with ``overlay=False``)."""
    return next((output[kind] for kind in OVERLAY_KINDS if isinstance(output.get(kind), str)), None)
