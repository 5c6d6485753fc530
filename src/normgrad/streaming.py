"""Explaining image collections of any size: finding the images, streaming them, sharding across processes.

* :func:`expand_inputs`: files as given; folders searched recursively and
  globs (``**`` for any depth) matched by one walk that follows symlinked
  folders but never enters one twice (symlink loops), skips hidden names
  (``.*``) and never enters the output folder; an image reached by two
  paths (symlinks, hard links) is explained once;
* a ``DataLoader`` with workers reads and preprocesses images while the
  model runs (:class:`ImageFiles`), recording the identity (size, mtime,
  ctime) of the very bytes it decoded; images too large, too elongated or
  with NaN/inf pixels become error items (see :mod:`normgrad.images`);
  workers die with the process that started them (Linux: ``PR_SET_PDEATHSIG``);
* images of equal preprocessed size are batched, at most ``4 × batch_size``
  waiting in memory (:func:`batches`); on CUDA a batch is stacked into
  pinned memory and copied without blocking (:func:`to_device`);
* outputs are encoded and written by background threads (:class:`Writer`:
  PNG and zlib encoding and file writes release the GIL), results handed
  back in submission order, at most ``limit`` waiting;
* under ``torchrun --nproc-per-node N`` (gloo on CPU, NCCL on GPUs) image
  ``i`` goes to rank ``i mod N`` (:class:`Shard`); rank 0 plans and merges.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from normgrad.errors import NormGradError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True)
class Input:
    """An input image: its path and the root folder its output name is relative to."""

    path: Path
    root: Path


def expand_inputs(items: list[str | Path], exclude: str | Path | None = None) -> list[Input]:
    """Every input image, in order, each once (see the module docstring); ``exclude``: a folder never entered.

    Roots: a folder argument is its own root, a glob's root is its directory
    part before the first wildcard, files given by name share their deepest
    common folder.  A missing file stays in the list (it is reported when read).
    """
    skip = _identity(exclude) if exclude is not None else None
    found: list[tuple[Path, Path | None]] = []  # (path, root); None: a file given by name
    for item in map(str, items):
        path = Path(item)
        if path.is_dir():
            found += [(p, path) for p in _walk(path, skip, lambda rel: rel.suffix.lower() in IMAGE_SUFFIXES)]
        elif _MAGIC.search(item) and not path.exists():
            root, pattern = _split_glob(item)
            matches = _walk(root, skip, _glob_matcher(pattern)) if root.is_dir() else []
            if not matches:
                raise NormGradError(f"no file matches {item!r}")
            found += [(p, root) for p in matches]
        else:
            found.append((path, None))
    named = [os.path.abspath(p.parent) for p, root in found if root is None]
    common = Path(os.path.commonpath(named)) if named else Path(".")
    unique: dict[Any, Input] = {}
    for path, root in found:
        unique.setdefault(_identity(path) or os.path.abspath(path), Input(path, common if root is None else root))
    return list(unique.values())


def _identity(path: str | Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _walk(root: Path, skip: tuple[int, int] | None, wanted: Callable[[Path], bool]) -> list[Path]:
    """Files below ``root`` whose relative path is ``wanted``, sorted; symlinked folders followed once, hidden names skipped."""
    seen: set[tuple[int, int]] = set()
    files: list[Path] = []
    stack = [Path()]
    while stack:
        relative = stack.pop()
        folder = root / relative
        key = _identity(folder)
        if key is None or key in seen or key == skip:
            continue
        seen.add(key)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks; loops end at `seen`
            except OSError:
                continue
            if is_dir:
                stack.append(relative / entry.name)
            elif wanted(relative / entry.name):
                try:
                    if entry.is_file():
                        files.append(relative / entry.name)
                except OSError:
                    continue
    return [root / f for f in sorted(files, key=lambda p: p.as_posix())]


def _split_glob(pattern: str) -> tuple[Path, str]:
    """``photos/**/*.jpg`` → (``photos``, ``**/*.jpg``): the folders before the first wildcard, and the rest."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if _MAGIC.search(part))
    return Path(*parts[:first]) if first else Path("."), "/".join(parts[first:])


def _glob_matcher(pattern: str) -> Callable[[Path], bool]:
    """A relative-path matcher for a glob: ``*``, ``?``, ``[...]`` within one name; ``**`` any number of folders."""
    parts = pattern.split("/")
    regex = "".join(
        ("(?:[^/]+/)*" if i < len(parts) - 1 else ".*") if part == "**" else _name_pattern(part) + ("/" if i < len(parts) - 1 else "")
        for i, part in enumerate(parts)
    )
    compiled = re.compile(f"(?s:{regex})\\Z")
    return lambda relative: compiled.match(relative.as_posix()) is not None


def _class_end(part: str, start: int) -> int:
    """The index of the ``]`` closing the ``[`` at ``start`` (a ``]`` right after ``[`` or ``[!`` is literal); -1 if none."""
    j = start + 1 + (part[start + 1 : start + 2] == "!")
    j += part[j : j + 1] == "]"
    return part.find("]", j)


def _name_pattern(part: str) -> str:
    """One path component of a glob as a regular expression that never crosses a ``/``."""
    out, i = "", 0
    while i < len(part):
        char = part[i]
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[" and (end := _class_end(part, i)) > 0:
            inside = part[i + 1 : end]
            inside = inside.replace("\\", "\\\\")
            out += f"[^{inside[1:]}/]" if inside.startswith("!") else f"[{inside}]"
            i = end
        else:
            out += re.escape(char)
        i += 1
    return out


@dataclass
class Item:
    """One image read by a worker: its tensor and photo plus the identity of the bytes read, or why it could not be read."""

    index: int
    path: Path
    name: str
    tensor: torch.Tensor | None = None
    photo: Any = None
    error: str | None = None
    identity: dict | None = None


class ImageFiles(Dataset):
    """Reads and preprocesses images in DataLoader workers; unreadable or refused files become error items."""

    def __init__(self, entries: list[tuple[int, Path, str]], preprocess: Callable[[Any], torch.Tensor]) -> None:
        self.entries, self.preprocess = entries, preprocess

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, position: int) -> Item:
        from normgrad.images import load_image
        from normgrad.pipeline import prepare
        from normgrad.store import identity

        index, path, name = self.entries[position]
        read = None
        try:
            with open(path, "rb") as file:
                read = identity(path, os.fstat(file.fileno()))
                photo = load_image(file)
            return Item(index, Path(path), name, prepare(photo, self.preprocess), photo, identity=read)
        except FileNotFoundError:
            return Item(index, Path(path), name, error=f"image {str(path)!r} does not exist")
        except IsADirectoryError:
            return Item(index, Path(path), name, error=f"{str(path)!r} is a folder, not an image")
        except OSError as error:
            return Item(index, Path(path), name, error=f"cannot read image {str(path)!r}: {error.strerror or error}")
        except NormGradError as error:
            return Item(index, Path(path), name, error=str(error), identity=read)
        except Exception as error:  # a decoder bug on one odd file must not stop the run
            return Item(index, Path(path), name, error=f"cannot read image {str(path)!r}: {type(error).__name__}: {error}", identity=read)


def batches(items: Iterator[Item], batch_size: int, on_error: Callable[[Item], None]) -> Iterator[list[Item]]:
    """Group items of equal tensor size into batches; at most ``4 × batch_size`` items wait."""
    buckets: dict[tuple, list[Item]] = {}
    waiting = 0
    for item in items:
        if item.error is not None:
            on_error(item)
            continue
        bucket = buckets.setdefault(tuple(item.tensor.shape), [])
        bucket.append(item)
        waiting += 1
        if len(bucket) == batch_size:
            waiting -= len(bucket)
            yield buckets.pop(tuple(item.tensor.shape))
        elif waiting >= 4 * batch_size:  # many sizes: release the fullest bucket early
            shape = max(buckets, key=lambda s: len(buckets[s]))
            waiting -= len(buckets[shape])
            yield buckets.pop(shape)
    for bucket in buckets.values():
        yield bucket


BACKGROUND_NICE = int(os.environ.get("NORMGRAD_BACKGROUND_NICE", "5"))  # readers and writers yield the CPU to the model


def lower_priority() -> None:
    """This thread (Linux: a thread has its own nice value) runs ``BACKGROUND_NICE`` steps below the model's thread,
    so that reading and writing fill the CPU the model leaves idle instead of stalling its parallel kernels."""
    if BACKGROUND_NICE <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE))
    except OSError:  # not permitted here: run at the same priority
        pass


def die_with_parent(parent: int, worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the worker is killed when its parent dies, even by ``kill -9`` (Linux); lower priority."""
    lower_priority()
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def loader(entries: list[tuple[int, Path, str]], preprocess: Callable, workers: int) -> Iterator[Item]:
    """Items in order, read by ``workers`` background processes (0: in this process)."""
    if not entries:
        return iter(())
    return iter(
        DataLoader(
            ImageFiles(entries, preprocess),
            batch_size=None,
            num_workers=workers,
            collate_fn=_as_is,
            prefetch_factor=4 if workers else None,
            worker_init_fn=partial(die_with_parent, os.getpid()) if workers else None,
        )
    )


def _as_is(item: Item) -> Item:
    return item


def to_device(tensors: list[torch.Tensor], device: str | torch.device) -> torch.Tensor:
    """Stack (C, H, W) tensors into one batch on ``device``; for CUDA through pinned memory, copied without blocking."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.stack(tensors).to(device)
    pinned = torch.empty((len(tensors), *tensors[0].shape), dtype=tensors[0].dtype, pin_memory=True)
    torch.stack(tensors, out=pinned)
    return pinned.to(device, non_blocking=True)  # torch's caching host allocator keeps `pinned` until the copy is done


class Writer:
    """Runs tasks on ``threads`` background threads (0: at once, in the caller); at most ``limit`` wait.

    ``submit`` and ``drain`` return the finished tasks' futures in submission
    order (``future.result()`` re-raises a task's exception), so the caller
    handles results, progress and failures in its own thread.  ``close``
    waits for the running tasks and cancels the waiting ones: an image is
    either written completely by its task or not started.
    """

    def __init__(self, threads: int, limit: int) -> None:
        self.limit = max(1, limit)
        self._pool = ThreadPoolExecutor(threads, "normgrad-writer", initializer=lower_priority) if threads > 0 else None
        self._pending: deque[Future] = deque()

    def submit(self, task: Callable[..., Any], *args: Any) -> list[Future]:
        if self._pool is None:
            future: Future = Future()
            try:
                future.set_result(task(*args))
            except BaseException as error:  # handed to the caller by result()
                future.set_exception(error)
            return [future]
        self._pending.append(self._pool.submit(task, *args))
        finished = []
        while self._pending and (len(self._pending) > self.limit or self._pending[0].done()):
            finished.append(self._pending.popleft())
        return finished

    def drain(self) -> list[Future]:
        """Every remaining task, finished, in submission order."""
        finished = list(self._pending)
        self._pending.clear()
        for future in finished:
            future.exception()  # waits
        return finished

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pending.clear()


@dataclass
class Shard:
    """This process's place in a ``torchrun`` job (rank 0 of 1 otherwise)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def join_shard(device: str) -> Shard:
    """Join the ``torchrun`` process group when launched by it (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    import torch.distributed as dist

    shard = Shard(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda"):
        torch.cuda.set_device(shard.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return shard


def share(shard: Shard, value: Any = None) -> Any:
    """Rank 0's ``value`` on every rank (a pickled broadcast); as is in a single process."""
    if not shard.distributed:
        return value
    import torch.distributed as dist

    box = [value if shard.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def finish_shard(shard: Shard) -> None:
    """Wait for every rank (so rank 0 can merge)."""
    if shard.distributed:
        import torch.distributed as dist

        dist.barrier()


def leave_shard(shard: Shard) -> None:
    if shard.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
