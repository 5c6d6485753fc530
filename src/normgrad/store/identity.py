"""Identities of files on disk: an input's (path, size, mtime, ctime) to tell whether ``--resume`` may skip it."""

from __future__ import annotations

import os
from pathlib import Path


def identity(path: str | Path, info: os.stat_result | None = None) -> dict | None:
    """An input's identity: absolute path, byte size, mtime and ctime in ns (``info``: a stat of the bytes actually read)."""
    try:
        info = info or os.stat(path)
    except OSError:
        return None
    return {"path": os.path.abspath(path), "bytes": info.st_size, "mtime_ns": info.st_mtime_ns, "ctime_ns": info.st_ctime_ns}
