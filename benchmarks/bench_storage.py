"""The two map storages of a run folder, at dataset scale: files, bytes and time, through the store's own API.

For each storage (``files``: one ``.npy`` per map; ``shards``: each rank's
maps appended to one file, :mod:`normgrad.store.shards`), ``--images`` images
(default 10,000), each with one combined map of ``--height`` × ``--width``
(default 300 × 400, float16: what ``--map-dtype float16`` writes for a
400 × 300 photo) and a record like explain's (top-5 predictions, target):

1. **write**: :meth:`OutputStore.begin` plans the run, ``--threads`` writer
   threads (explain's default on the CPU: 2) commit every image with
   :meth:`OutputStore.save` (claim, map, record; ``.npy`` encoding included),
   then :meth:`OutputStore.finish` merges the journal into ``summary.json``;
2. **files and bytes** in the folder afterwards (apparent size and the blocks
   the file system allocated);
3. **resume plan**: :meth:`OutputStore.begin` with ``resume=True`` over the
   finished folder (every image found done: one ``stat`` per output);
4. **read**: ``normgrad.open_run`` (the manifest), iterating all records
   (their predictions; no map), ``--random`` maps by random index, and all
   maps in order.

Timings are of a warm page cache (the files were just written); the folder
lies in ``--dir`` (default: the system's temporary folder: say which file
system it is when publishing).  Nothing is downloaded; no model runs.

Usage::

    python benchmarks/bench_storage.py                       # 10,000 images, both storages
    python benchmarks/bench_storage.py --images 200          # a quick check
    python benchmarks/bench_storage.py --json docs/storage.json --dir /data/tmp
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import normgrad as ng  # noqa: E402
from normgrad.store import OutputStore, encode_npy, new_run_id  # noqa: E402

SETTINGS = {"model": "benchmark", "method": "default", "layers": ["layer3", "layer4"], "combine": "product", "map_dtype": "float16"}


def maps(height: int, width: int, dtype: str, count: int = 16) -> list[np.ndarray]:
    """A few smooth maps in [0, 1] (bilinear upsampling of 8×8 noise), cycled over the images (their content does not
    change the cost of raw storage)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(count, 1, 8, 8, generator=generator)
    fine = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return [m[0].numpy().astype(dtype) for m in fine]


def files_of(name: str) -> list[str]:
    return [f"{name}.npy"]


def record(store: OutputStore, work: Any, size: tuple[int, int], npy_bytes: int) -> dict:
    """A record as explain writes it (top-5 predictions, the target), for a map of ``npy_bytes``."""
    classes = [{"class": c, "name": f"class {c}", "probability": round(0.5 / (k + 1), 6)} for k, c in enumerate(range(5))]
    outputs = [{"layer": "combined", "npy": f"{work.name}.npy", "npy_bytes": npy_bytes}]
    return {"type": "image", "run": store.run, "rank": 0, "index": work.index, "name": work.name, "image": work.path, "input": None,
            "size": list(size), "layers": SETTINGS["layers"], "outputs": outputs, "predictions": classes, "target": classes[0]}  # fmt: skip


def inputs(count: int) -> list[tuple[str, str]]:
    """``count`` input paths in folders of 1,000 (as a dataset is laid out); they are never opened."""
    root = "/dataset"
    return [(f"{root}/part{i // 1000:03d}/img{i:06d}.jpg", root) for i in range(count)]


def folder_size(out: Path) -> tuple[int, int, int]:
    """Files, apparent bytes and allocated bytes below ``out`` (everything: maps, manifest, internal files)."""
    files = apparent = allocated = 0
    for directory, _, names in os.walk(out):
        for name in names:
            info = os.lstat(os.path.join(directory, name))
            files, apparent, allocated = files + 1, apparent + info.st_size, allocated + info.st_blocks * 512
    return files, apparent, allocated


def measure(storage: str, out: Path, images: int, planes: list[np.ndarray], threads: int, sample: int) -> dict:
    height, width = planes[0].shape
    result: dict[str, Any] = {"storage": storage, "images": images}
    started = time.perf_counter()
    store = OutputStore(out, new_run_id(), storage=storage)
    try:
        plan = store.begin(SETTINGS, inputs(images), files_of, resume=False, overwrite=False)

        def save(work: Any) -> None:
            data = encode_npy(planes[work.index % len(planes)])
            store.save(work, {f"{work.name}.npy": data}, record(store, work, (width, height), len(data)))

        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(save, plan.work):
                pass
        store.journal.close()
        store.finish(1)
    finally:
        store.close()
    result["write_s"] = time.perf_counter() - started
    result["files"], result["bytes"], result["bytes_allocated"] = folder_size(out)

    started = time.perf_counter()
    store = OutputStore(out, new_run_id(), storage=storage)
    try:
        again = store.begin(SETTINGS, inputs(images), files_of, resume=True, overwrite=False)
    finally:
        store.close()
    result["resume_plan_s"] = time.perf_counter() - started
    assert len(again.done) == images and not again.work, "the resume plan must find every image done"

    started = time.perf_counter()
    run = ng.open_run(out)
    result["open_s"] = time.perf_counter() - started
    started = time.perf_counter()
    top = sum(r.predictions[0]["probability"] for r in run)
    result["records_s"] = time.perf_counter() - started
    assert len(run) == images and top > 0
    chosen = random.Random(0).sample(range(images), min(sample, images))
    started = time.perf_counter()
    for i in chosen:
        assert run.map(i).shape == (height, width)
    result["random_map_ms"] = (time.perf_counter() - started) / len(chosen) * 1000
    started = time.perf_counter()
    for i in range(images):
        run.map(i)
    result["all_maps_s"] = time.perf_counter() - started
    run.close()
    return result


def file_system(path: Path) -> str:
    try:
        return subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, check=True).stdout.splitlines()[-1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def table(results: list[dict]) -> str:
    rows = [
        ("files in the folder", lambda r: f"{r['files']:,}"),
        ("bytes (apparent)", lambda r: f"{r['bytes'] / 1e6:,.1f} MB"),
        ("bytes (allocated)", lambda r: f"{r['bytes_allocated'] / 1e6:,.1f} MB"),
        ("write (plan, save, merge)", lambda r: f"{r['write_s']:.1f} s ({r['images'] / r['write_s']:,.0f} images/s)"),
        ("resume plan (all done)", lambda r: f"{r['resume_plan_s']:.2f} s"),
        ("open_run", lambda r: f"{r['open_s']:.2f} s"),
        ("iterate all records", lambda r: f"{r['records_s'] * 1000:.1f} ms"),
        ("one map, random index", lambda r: f"{r['random_map_ms']:.2f} ms"),
        ("all maps in order", lambda r: f"{r['all_maps_s']:.1f} s"),
    ]
    lines = ["| | " + " | ".join(r["storage"] for r in results) + " |", "|---|" + "---:|" * len(results)]
    lines += [f"| {label} | " + " | ".join(cell(r) for r in results) + " |" for label, cell in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--height", type=int, default=300)
    parser.add_argument("--width", type=int, default=400)
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--threads", type=int, default=2, help="writer threads (explain's default on the CPU: 2)")
    parser.add_argument("--random", type=int, default=1000, help="maps read by random index")
    parser.add_argument("--storages", default="files,shards")
    parser.add_argument("--dir", type=Path, default=None, help="where the run folders are made (and removed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    planes = maps(args.height, args.width, args.dtype)
    parent = Path(tempfile.mkdtemp(prefix="normgrad-bench-storage-", dir=args.dir))
    results = []
    try:
        for storage in args.storages.split(","):
            print(f"{storage}: {args.images:,} images of {args.height}x{args.width} {args.dtype} ...", file=sys.stderr, flush=True)
            results.append(measure(storage, parent / storage, args.images, planes, args.threads, args.random))
            shutil.rmtree(parent / storage)
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    setup = {"images": args.images, "map": [args.height, args.width], "dtype": args.dtype, "threads": args.threads,
             "file_system": file_system(parent.parent), "cpus": os.cpu_count()}  # fmt: skip
    print(f"{args.images:,} images, one {args.height}x{args.width} {args.dtype} map each, {args.threads} writer threads, "
          f"on {setup['file_system']} (warm page cache)\n")  # fmt: skip
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps({"setup": setup, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
