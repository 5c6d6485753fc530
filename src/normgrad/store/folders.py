"""Descriptors of the folders a run writes into, each opened once instead of once per file.

Opening ``OUT/gallery/img/3f`` safely takes a ``mkdir`` and an ``open`` per
path component (:func:`normgrad.store.layout.open_below`: ``O_NOFOLLOW`` on
each, so no symlink is ever followed).  A run writes several files per image
into a few hundred folders, so doing that walk for every file cost about a
millisecond per image on an ext4 disk, up to a tenth of the pipeline's own
time with a trivial model (``benchmarks/bench_pipeline.py``).  :class:`FolderCache` walks each
folder once and keeps its descriptor, so later writes cost one ``dup``.

Why a cached descriptor is as safe as a fresh walk: a descriptor names the
folder itself, not its path.  Swapping a path component for a symlink after
the walk cannot redirect writes out of OUT; they still land in the folder
that was opened.  A folder removed during the run is opened afresh on the
next write (:meth:`FolderCache.forget`, called by the writer when a write
finds its folder gone).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

from normgrad.store.layout import open_below

FOLDERS_KEPT = 256  # open descriptors at most (least recently used closed first): well below any ulimit -n


class FolderCache:
    """Thread-safe cache of the descriptors of folders below ``root_fd`` (shown as ``out``), created on demand."""

    def __init__(self, root_fd: int, out: Path, size: int = FOLDERS_KEPT) -> None:
        self._root, self._out, self._size = root_fd, out, max(1, size)
        self._open: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def dup(self, relative: str) -> int:
        """A new descriptor (the caller closes it) of the folder ``relative`` below OUT, created if absent.

        Raises what :func:`open_below` raises: :class:`OutputConflict` for a
        symlink or file on the way, ``OSError`` when the folder cannot be made.
        """
        with self._lock:
            fd = self._open.get(relative)
            if fd is not None:
                self._open.move_to_end(relative)
                return os.dup(fd)
        fd = open_below(self._root, relative, self._out, create=True)  # outside the lock: other writers go on
        with self._lock:
            kept = self._open.setdefault(relative, fd)
            if kept != fd:  # another thread opened it meanwhile: keep one
                os.close(fd)
            self._open.move_to_end(relative)
            while len(self._open) > self._size:
                os.close(self._open.popitem(last=False)[1])
            return os.dup(kept)

    def forget(self, relative: str) -> None:
        """Drop (and close) the descriptor of ``relative``: the next :meth:`dup` walks to it again."""
        with self._lock:
            fd = self._open.pop(relative, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            kept, self._open = list(self._open.values()), OrderedDict()
        for fd in kept:
            with contextlib.suppress(OSError):
                os.close(fd)
