"""Append-only JSON lines (the journals) and single files written atomically (temporary file, then ``os.replace``)."""

from __future__ import annotations

import json
import os
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import Any

from normgrad.errors import NormGradError


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
