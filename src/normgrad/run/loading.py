"""Reading and preprocessing the inputs while the model runs, and grouping them into batches.

* a ``DataLoader`` with workers reads and preprocesses images (:class:`ImageFiles`),
  recording the identity (size, mtime, ctime) of the very bytes it decoded;
  images too large, too elongated or with NaN/inf pixels become error items
  (see :mod:`normgrad.images`); workers die with the process that started them
  (Linux: ``PR_SET_PDEATHSIG``) and run below the model's priority;
* images of equal preprocessed size are batched, at most ``4 × batch_size``
  waiting in memory (:func:`batches`); on CUDA a batch is stacked into pinned
  memory and copied without blocking (:func:`to_device`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from normgrad.errors import NormGradError


@dataclass
class Item:
    """One image read by a worker: its tensor and photo plus the identity of the bytes read, or why it could not be read.

    ``tensor`` is the input explained; ``predict_tensor`` the input at the model's own size, for the predictions
    (``None``: the predictions come from ``tensor``, e.g. where both sizes are the same); ``label`` the class a
    dataset gave with the image (``None``: none given)."""

    index: int
    path: Path
    name: str
    tensor: torch.Tensor | None = None
    photo: Any = None
    error: str | None = None
    identity: dict | None = None
    predict_tensor: torch.Tensor | None = None
    label: int | None = None
    pixels: bool = False  # the tensors are uint8 pixels that Prepare.finish normalises (see Prepare.read)


@dataclass(frozen=True)
class Prepare:
    """A photo's model inputs: at the explained size (``preprocess``) and, where it differs, at the model's own (``predict``)."""

    preprocess: Callable[[Any], torch.Tensor]
    predict: Callable[[Any], torch.Tensor] | None = None

    def __call__(self, photo: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        from normgrad.pipeline import prepare

        x = prepare(photo, self.preprocess)
        if self.predict is None or self._same_input(photo, x):
            return x, None  # the same input: the explained pass gives the predictions
        return x, prepare(photo, self.predict)

    def _same_input(self, photo: Any, x: torch.Tensor) -> bool:
        """Whether the model's own preprocessing gives ``photo`` the very input ``x`` (same size, same normalisation)."""
        size = self.predict.input_size(*photo.size) if hasattr(self.predict, "input_size") else None
        return size is not None and tuple(size) == tuple(x.shape[-2:]) and _same_normalisation(self.predict, self.preprocess)

    @property
    def splits(self) -> bool:
        """Whether the preprocessing splits into pixels and normalisation (:class:`normgrad.models.Preprocess`)."""
        return all(hasattr(p, "pixels") and hasattr(p, "normalise") for p in (self.preprocess, self.predict) if p is not None)

    def read(self, photo: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """In a reader process: :meth:`__call__`, but uint8 pixels where the preprocessing :attr:`splits` (a quarter of
        the bytes to hand over between processes, which costs more than normalising); :meth:`finish` completes them."""
        from normgrad.images import check_input_size

        if not self.splits:
            return self(photo)
        check_input_size(*self.preprocess.input_size(*photo.size))
        x = self.preprocess.pixels(photo)
        if self.predict is None or self._same_input(photo, x):
            return x, None
        check_input_size(*self.predict.input_size(*photo.size))
        return x, self.predict.pixels(photo)

    def finish(self, item: Item) -> Item:
        """In the main process: an item read by :meth:`read` with its pixels normalised (uint8 pixels are finite)."""
        if not item.pixels:
            return item
        item.tensor = self.preprocess.normalise(item.tensor)
        if item.predict_tensor is not None:
            item.predict_tensor = self.predict.normalise(item.predict_tensor)
        item.pixels = False
        return item


def _same_normalisation(a: Any, b: Any) -> bool:
    return getattr(a, "mean", None) == getattr(b, "mean", None) and getattr(a, "std", None) == getattr(b, "std", None)


def as_prepare(preprocess: Callable[[Any], torch.Tensor] | Prepare) -> Prepare:
    return preprocess if isinstance(preprocess, Prepare) else Prepare(preprocess)


class ImageFiles(Dataset):
    """Reads and preprocesses images in DataLoader workers; unreadable or refused files become error items.

    A file's type is checked before it is opened: opening a FIFO would block the reader forever."""

    def __init__(self, entries: list[tuple[int, Path, str]], preprocess: Callable[[Any], torch.Tensor] | Prepare) -> None:
        self.entries, self.prepare = entries, as_prepare(preprocess)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, position: int) -> Item:
        import stat

        from normgrad.images import load_image
        from normgrad.store import identity

        index, path, name = self.entries[position]
        read = None
        try:
            mode = os.stat(path).st_mode
            if stat.S_ISDIR(mode):
                return Item(index, Path(path), name, error=f"{str(path)!r} is a folder, not an image")
            if not stat.S_ISREG(mode):
                return Item(index, Path(path), name, error=f"{str(path)!r} is not a regular file (a pipe, socket or device)")
            with open(path, "rb", opener=_no_blocking) as file:
                info = os.fstat(file.fileno())
                if not stat.S_ISREG(info.st_mode):  # replaced between the check and the open
                    return Item(index, Path(path), name, error=f"{str(path)!r} is not a regular file (a pipe, socket or device)")
                read = identity(path, info)
                photo = load_image(file)
            tensor, predict_tensor = self.prepare.read(photo)
            return Item(index, Path(path), name, tensor, photo, identity=read, predict_tensor=predict_tensor, pixels=self.prepare.splits)
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


def _no_blocking(path: str, flags: int) -> int:
    """Open without blocking (a FIFO swapped in after the type check must not hang the reader), then blocking reads again."""
    fd = os.open(path, flags | os.O_NONBLOCK)
    os.set_blocking(fd, True)
    return fd


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


def loader(entries: list[tuple[int, Path, str]], preprocess: Callable | Prepare, workers: int) -> Iterator[Item]:
    """Items in order, read by ``workers`` background processes (0: in this process), normalised in this one."""
    files = ImageFiles(entries, preprocess)
    return map(files.prepare.finish, read_in_order(files, workers))


def read_in_order(items: Dataset, workers: int) -> Iterator[Item]:
    """``items[0], items[1], ...`` (each an :class:`Item`), read by ``workers`` background processes (0: in this process)."""
    if not len(items):  # type: ignore[arg-type]
        return iter(())
    return iter(
        DataLoader(
            items,
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
