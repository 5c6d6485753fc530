"""Identities of files on disk, recorded so that ``--resume`` can tell whether what it would skip is still the same.

* an **input** (a photo): absolute path, byte size, mtime and ctime in ns.
  Cheap (one ``stat``) because a run may have millions of inputs; a replaced
  file changes its ctime even when its mtime is put back (``cp -p``,
  ``rsync -t``), which user space cannot set.
* the **weights** file: absolute path, byte size and the SHA-256 of its
  bytes.  One file per run, and the one whose change would put one model's
  maps under another's name, so it is identified by content: a checkpoint
  replaced by another of the same size with its mtime kept is noticed, and
  the same bytes copied or touched still resume.  The cost is one read of the
  file: ``hashlib``'s SHA-256 took 0.6 s for 100 MB on the 2-core test
  machine (warm cache; SHA-1 0.5 s, BLAKE2b 1.0 s, MD5 1.1 s there), paid
  once per run by rank 0.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


def identity(path: str | Path, info: os.stat_result | None = None) -> dict | None:
    """An input's identity: absolute path, byte size, mtime and ctime in ns (``info``: a stat of the bytes actually read)."""
    try:
        info = info or os.stat(path)
    except OSError:
        return None
    return {"path": os.path.abspath(path), "bytes": info.st_size, "mtime_ns": info.st_mtime_ns, "ctime_ns": info.st_ctime_ns}


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, in hex (read in 1 MiB blocks: the file is never held in memory)."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def weights_identity(weights: str | Path | None) -> Any:
    """How a run's settings record its weights: ``"none"`` (random), ``"default"`` (the model's own), a file as
    ``{"path", "bytes", "sha256"}``, or the absolute path of a file that cannot be read (the loader reports it)."""
    if weights is None or str(weights).lower() == "none":
        return "none"
    if str(weights) == "default":
        return "default"
    try:
        size = os.stat(weights).st_size
        digest = file_digest(weights)
    except OSError:
        return os.path.abspath(weights)
    return {"path": os.path.abspath(weights), "bytes": size, "sha256": digest}
