"""Descriptors of the folders a run writes into, each opened once instead of once per file.

Opening ``OUT/gallery/img/3f`` safely takes a ``mkdir`` and an ``open`` per
path component (:func:`normgrad.store.layout.open_below`: ``O_NOFOLLOW`` on
each, so no symlink is ever followed).  A run writes several files per image
into a few hundred folders, so doing that walk for every file cost about a
millisecond per image on an ext4 disk, up to a tenth of the pipeline's own
time with a trivial model (``benchmarks/bench_pipeline.py``).
:class:`FolderCache` walks to each folder once and keeps its descriptor, so
a later write costs one ``stat`` and one ``dup``.

Why a cached descriptor is as safe as a fresh walk: a descriptor names the
folder itself, not its path, so a path component swapped for a symlink
cannot redirect writes out of OUT.  And so that files still land where
their records say, every :meth:`FolderCache.dup` checks with one ``stat``
of the path that it still leads to the folder opened (same device and
inode, the last component not a symlink); a folder renamed, removed or
replaced during the run is walked to afresh, which makes it again or
refuses a symlink as the first walk would.
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
        self._open: OrderedDict[str, tuple[int, tuple[int, int]]] = OrderedDict()  # relative -> (fd, (st_dev, st_ino))
        self._lock = threading.Lock()

    def dup(self, relative: str) -> int:
        """A new descriptor (the caller closes it) of the folder ``relative`` below OUT, created if absent.

        Raises what :func:`open_below` raises: :class:`OutputConflict` for a
        symlink or file on the way, ``OSError`` when the folder cannot be made.
        """
        with self._lock:
            kept = self._open.get(relative)
            if kept is not None and self._still_there(relative, kept[1]):
                self._open.move_to_end(relative)
                return os.dup(kept[0])
        fd = open_below(self._root, relative, self._out, create=True)  # outside the lock: other writers go on
        info = os.fstat(fd)
        with self._lock:
            old = self._open.pop(relative, None)  # stale, or another thread's walk meanwhile: keep this one
            if old is not None:
                os.close(old[0])
            self._open[relative] = (fd, (info.st_dev, info.st_ino))
            while len(self._open) > self._size:
                os.close(self._open.popitem(last=False)[1][0])
            return os.dup(fd)

    def _still_there(self, relative: str, identity: tuple[int, int]) -> bool:
        """Whether ``OUT/relative`` still names the folder opened (not a symlink, nor another folder put there)."""
        try:
            info = os.stat(relative, dir_fd=self._root, follow_symlinks=False)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == identity

    def close(self) -> None:
        with self._lock:
            kept, self._open = list(self._open.values()), OrderedDict()
        for fd, _ in kept:
            with contextlib.suppress(OSError):
                os.close(fd)
