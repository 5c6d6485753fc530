"""Compact map storage (``storage="shards"``): every map of a run in a few large append-only files, read back by offset.

With ``storage="files"`` each map is a ``.npy`` file of its own: simple, one
file per map, readable by any tool, but a dataset of a million images makes
a million files (and two million with overlays).  With ``storage="shards"``
each rank of each run appends its maps' raw bytes (C order, little-endian
float16 or float32) to one file, ``OUT/shards/<run>.rank<R>.bin``, and the
image's journal record says where they are::

    {"layer": "combined", "shard": "shards/<run>.rank0.bin", "offset": 1228800, "bytes": 240000,
     "shape": [300, 400], "dtype": "float16", "crc32": 2840015307}

**Exactly once, resumable** (the guarantees of the files mode, by the same
order of events): a writer thread reserves a range at the end of the shard
(under a lock: threads never overlap), writes its bytes there with
``pwrite``, and only then appends the image's record to the journal.  A
record therefore always points at complete bytes; a process killed
mid-write leaves bytes no record points at (a torn tail, or a hole left by a
thread that had not finished), which nothing ever reads: the image has no
record and is redone by ``--resume``, into the new run's own shard.  Shards
are never rewritten, so a map, once recorded, never changes under a reader;
a redone image leaves its earlier bytes unused (``docs/storage.md``: when
that matters, start afresh).  ``crc32`` lets a reader refuse damaged bytes.
Like the files mode (``os.replace`` without ``fsync``), this survives the
process being killed, not a power cut: the shard is flushed to disk
(``fdatasync``) once, when its rank closes it.

Why not zarr or HDF5: HDF5's writer is one process at a time (SWMR admits
one writer) and its library is not thread-safe for writing without a
global lock, so torchrun ranks could not append to one file; zarr writes one
file per chunk (a chunk per image is a file per image again, a chunk of
many images is rewritten by every image that lands in it, and concurrent
writers to one chunk lose updates).  Neither records *when* an image's
bytes are complete, which is what exactly-once needs: the journal already
does, so a raw append-only file plus an index in the journal is the whole
design (no dependency, readable with ``numpy.memmap`` given the offsets).
"""

from __future__ import annotations

import io
import os
import threading
import zlib
from pathlib import Path
from typing import Any

from normgrad.errors import NormGradError

SHARDS = "shards"  # the folder below OUT holding the shards
STORAGES = ("files", "shards")
DTYPES = ("float16", "float32")


def shard_name(run: str, rank: int) -> str:
    """The shard of one rank of one run, relative to OUT."""
    return f"{SHARDS}/{run}.rank{rank}.bin"


def split_npy(data: bytes | Any) -> Any:
    """The array held in ``.npy`` bytes (or an array as it is), C-ordered; float16 and float32 only."""
    import numpy as np

    array = data if isinstance(data, np.ndarray) else np.load(io.BytesIO(data), allow_pickle=False)
    if array.dtype.name not in DTYPES:
        raise NormGradError(f"a map in a shard must be float16 or float32, not {array.dtype.name}")
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


class ShardAppender:
    """One rank's append-only shard: :meth:`append` reserves a range at the end and writes it (thread-safe).

    ``directory`` (a descriptor of ``OUT/shards``, owned by the appender from
    now on) and ``name`` (the file's name there, created exclusively).
    """

    def __init__(self, directory: int, name: str) -> None:
        self.directory, self.name = directory, name
        self._lock = threading.Lock()
        self._end = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(name, flags, 0o644, dir_fd=directory)
        except BaseException:
            os.close(directory)
            raise

    def append(self, array: Any) -> dict:
        """Write one map at the end; its index entry (``offset``, ``bytes``, ``shape``, ``dtype``, ``crc32``), once
        the bytes are in the file."""
        data = memoryview(array).cast("B")
        with self._lock:
            offset = self._end
            self._end += len(data)
        view, position = data, offset
        while view:
            written = os.pwrite(self.fd, view, position)
            view, position = view[written:], position + written
        return {"offset": offset, "bytes": len(data), "shape": list(array.shape), "dtype": array.dtype.name, "crc32": zlib.crc32(data)}

    def close(self) -> None:
        """Flush the shard to disk and close it."""
        try:
            os.fdatasync(self.fd)
        except OSError:
            pass  # a file system without fdatasync: the bytes are written, only not forced out
        finally:
            os.close(self.fd)
            os.close(self.directory)


def read_range(directory: int, name: str, offset: int, length: int) -> bytes | None:
    """``length`` bytes at ``offset`` of the plain file ``name`` in ``directory`` (``None``: absent, a symlink, too short)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=directory)
    except OSError:
        return None
    try:
        return pread_exactly(fd, offset, length)
    finally:
        os.close(fd)


def pread_exactly(fd: int, offset: int, length: int) -> bytes | None:
    """``length`` bytes at ``offset``, or ``None`` when the file ends before them."""
    chunks, position, left = [], offset, length
    while left:
        chunk = os.pread(fd, left, position)
        if not chunk:
            return None
        chunks.append(chunk)
        position, left = position + len(chunk), left - len(chunk)
    return b"".join(chunks)


def decode_map(data: bytes | None, output: dict, where: Path | str) -> Any:
    """The map of one output from its bytes: a shard's range (checked against the record's ``bytes``, ``crc32``,
    ``shape`` and ``dtype``) or a ``.npy`` file; finite.  One NormGradError naming ``where`` otherwise."""
    import numpy as np

    if data is None:
        raise NormGradError(f"{where} is missing or shorter than its record says")
    if output.get("shard") is not None:
        shape, dtype = tuple(output["shape"]), np.dtype(output["dtype"]).newbyteorder("<")
        if len(data) != output["bytes"] or len(data) != int(np.prod(shape)) * dtype.itemsize:
            raise NormGradError(f"{where}: the map's bytes do not match its shape {list(shape)} and type {output['dtype']}")
        if output.get("crc32") is not None and zlib.crc32(data) != output["crc32"]:
            raise NormGradError(f"{where}: the map's bytes are damaged (their CRC-32 is not the one recorded)")
        array = np.frombuffer(data, dtype=dtype).reshape(shape)
    else:
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise NormGradError(f"{where} is not a .npy map ({error})") from None
        if array.dtype.name not in DTYPES:
            raise NormGradError(f"{where} holds {array.dtype.name}, not a float16 or float32 map")
    if not np.isfinite(array).all():
        raise NormGradError(f"{where} holds values that are not finite")
    return array
