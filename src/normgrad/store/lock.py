"""One run at a time: an exclusive ``flock`` on ``OUT/.normgrad/lock`` (which names its holder), and the read-only
checks a run makes before its model loads."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from normgrad.store.layout import INTERNAL, StoreError


def take_lock(internal: int, out: Path, run: str) -> int:
    """Lock ``lock`` in the folder ``internal`` (``OUT/.normgrad``) for ``run``, non-blocking; the descriptor holding it
    (closing it releases the lock), or a StoreError naming the holder if another run has it."""
    import fcntl

    fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644, dir_fd=internal)
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
            f"another normgrad run is writing into {out} ({holder or 'holder unknown'}); wait for it or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"run {run}, pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
    return fd


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
