"""Explaining image collections of any size: streaming, batching, resuming, sharding.

* inputs are files, folders (searched recursively) and glob patterns;
* a ``DataLoader`` with workers reads and preprocesses images while the
  model runs; images of equal preprocessed size are batched together, and at
  most ``4 × batch_size`` images wait in memory;
* every image's outputs are written as soon as its batch is done, with one
  JSON line per image in ``records.rank<R>.jsonl``; ``resume`` skips images
  already recorded there;
* under ``torchrun --nproc-per-node N`` (``torch.distributed``: gloo on CPU,
  NCCL on GPUs) image ``i`` goes to rank ``i mod N`` — each image exactly
  once, each rank writing only its own files — and rank 0 merges the
  records into ``summary.json``.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from normgrad.errors import NormGradError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


def expand_inputs(items: list[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for images, glob patterns expanded; order kept, duplicates dropped."""
    paths: list[Path] = []
    for item in map(str, items):
        if Path(item).is_dir():
            paths += sorted(p for p in Path(item).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif any(char in item for char in "*?[") and not Path(item).exists():
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise NormGradError(f"no file matches {item!r}")
            paths += [Path(m) for m in matches if Path(m).is_file()]
        else:
            paths.append(Path(item))
    return list(dict.fromkeys(paths))


def unique_stems(paths: list[Path]) -> list[str]:
    """Output names: the file stem, with ``-1``, ``-2``, ... for repeats (deterministic, the same on every rank)."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}-{count}")
    return stems


@dataclass
class Item:
    """One image read by a worker: its tensor and original photo, or the reason it could not be read."""

    index: int
    path: Path
    stem: str
    tensor: torch.Tensor | None = None
    photo: Any = None
    error: str | None = None


class ImageFiles(Dataset):
    """Reads and preprocesses images in DataLoader workers; unreadable files become error items."""

    def __init__(self, entries: list[tuple[int, Path, str]], preprocess: Callable[[Any], torch.Tensor]) -> None:
        self.entries, self.preprocess = entries, preprocess

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, position: int) -> Item:
        from normgrad.images import load_image

        index, path, stem = self.entries[position]
        try:
            photo = load_image(path)
        except NormGradError as error:
            return Item(index, path, stem, error=str(error))
        return Item(index, path, stem, self.preprocess(photo), photo)


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


def loader(entries: list[tuple[int, Path, str]], preprocess: Callable, workers: int) -> Iterator[Item]:
    """Items in order, read by ``workers`` background processes (0: in this process)."""
    dataset = ImageFiles(entries, preprocess)
    if not entries:
        return iter(())
    return iter(
        DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=lambda item: item, prefetch_factor=4 if workers else None)
    )


@dataclass
class Shard:
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
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return shard


def finish_shard(shard: Shard) -> None:
    """Wait for every rank (so rank 0 can merge), then leave the group."""
    if shard.distributed:
        import torch.distributed as dist

        dist.barrier()


def leave_shard(shard: Shard) -> None:
    if shard.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def read_records(out: Path) -> list[dict]:
    """Every per-image record written so far, by any rank (lines cut by an interruption are ignored)."""
    records = []
    for path in sorted(out.glob("records.rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
