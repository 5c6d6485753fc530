"""The pipeline's own capacity: ``normgrad.explain`` with a trivial model, so that only the run itself is measured.

The model is one 1×1 convolution (3 → 1 channels) and a linear head: the engine's share (forward, backward and the
map) is about 1.5 ms per photo (a 3×3 convolution to 4 channels, used before, cost ~10 ms per photo at 400×300 on one
thread: the model, not the pipeline).  The rest is the time of
reading and decoding the JPEGs, preprocessing, bringing the maps to each photo's size, the overlays, PNG and
NPY encoding, the records and the gallery: what must keep up with the engine on an accelerator.

For each number of cores ``k`` (1, 2, ... ``--cores``) a fresh process is pinned to ``k`` CPUs
(``os.sched_setaffinity``), with one torch thread, ``k`` reader processes and ``k`` writer threads, and explains
``--count`` photos of 400×300 (JPEG quality 90, the photos of ``bench_explain.py``) into a fresh folder, after
one photo explained in the same process (imports and first calls warm): images/s = ``count / T`` (T includes
planning and the readers' start, a fixed cost that ``--count`` amortises).  Reported: images/s, images/s
per core, and the scaling from 1 to k cores, ``ips(k) / (k · ips(1))``, for the default outputs (PNG overlay,
``.npy``, gallery) — with k readers and writers, and with none (all in the model's thread, explain's default on
machines of 2 cores or fewer) — overlays without the gallery, the same two with JPEG overlays (``--overlay-format jpg``), and
maps only (``--no-overlay``, no gallery).

Photos and outputs live in RAM (``/dev/shm``) when it has room, else in the temporary folder (``--scratch DIR``
chooses): the pipeline's cost is CPU work, and a disk's own variance (TRIMs after the previous round's outputs were
deleted) would blur it; see ``measure.scratch_folder``.

Usage: ``python benchmarks/bench_pipeline.py [--count 400] [--cores 2] [--repeats 3] [--out docs]``; ``--quick``:
24 photos, one round.  Writes ``OUT/benchmarks-pipeline.md``/``.json`` and a section of ``OUT/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_explain import SRC, prepare_photos  # noqa: E402
from measure import file_system, load_average, machine, scratch_folder, write_section  # noqa: E402

VARIANTS = {  # name -> ng.explain keywords
    "default outputs (overlay, .npy, gallery)": {},
    "default outputs, all in the model's thread (--workers 0 --writers 0: explain's default on ≤ 2 cores)": {"workers": 0, "writers": 0},
    "overlay and .npy, no gallery": {"gallery": False},
    "JPEG overlay (--overlay-format jpg), .npy, gallery": {"overlay_format": "jpg"},
    "JPEG overlay and .npy, no gallery": {"overlay_format": "jpg", "gallery": False},
    "maps only (.npy)": {"overlay": False, "gallery": False},
}


def child(folder: Path, one: Path, out: Path, cores: int, variant: str) -> None:
    """In a fresh process: pin to ``cores`` CPUs, explain ``one`` (warm-up) then ``folder`` into ``out`` with the trivial
    model; print the seconds of the second."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < cores:
        raise SystemExit(f"only {len(available)} CPU(s) available here; asked for {cores}")
    os.sched_setaffinity(0, available[:cores])
    import torch
    from torch import nn

    import normgrad as ng

    torch.set_num_threads(1)
    model = nn.Sequential(nn.Conv2d(3, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 1000)).eval()
    options = dict(model=model, method="normgrad", layers=["0"], workers=cores, writers=cores, batch_size=8, verbose=False)
    options.update(VARIANTS[variant])
    ng.explain(one, out.with_name(out.name + "-warm"), **options)
    start = time.perf_counter()
    result = ng.explain(folder, out, **options)
    elapsed = time.perf_counter() - start
    assert result.ok, result.failed[:3]
    print(json.dumps({"seconds": elapsed, "images": len(result.records)}))


def timed(folder: Path, one: Path, out: Path, cores: int, variant: str) -> float:
    for old in (out, out.with_name(out.name + "-warm")):
        shutil.rmtree(old, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    argv = [sys.executable, __file__, "--child", str(folder), str(one), str(out), str(cores), variant]
    run = subprocess.run(argv, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])["seconds"]


def measure(folder: Path, one: Path, scratch: Path, count: int, cores: list[int], repeats: int) -> dict:
    """Median images/s per (variant, cores), rounds interleaved so that the machine's drift hits every setting alike."""
    samples: dict[tuple[str, int], list[float]] = {(v, k): [] for v in VARIANTS for k in cores}
    for r in range(repeats):
        for variant in VARIANTS:
            for k in cores:
                samples[(variant, k)].append(count / timed(folder, one, scratch / "out", k, variant))
                print(f"  round {r + 1}: {variant}, {k} core(s): {samples[(variant, k)][-1]:.1f} img/s", flush=True)
    table = {}
    for variant in VARIANTS:
        rates = {k: statistics.median(samples[(variant, k)]) for k in cores}
        table[variant] = {
            str(k): {"images_per_s": rates[k], "per_core": rates[k] / k, "scaling": rates[k] / (k * rates[cores[0]])} for k in cores
        }
    return table


def report(table: dict, count: int, results: dict) -> tuple[str, str]:
    lines = ["| outputs | cores | images/s | images/s per core | scaling vs 1 core |", "|---|---:|---:|---:|---:|"]
    for variant, rows in table.items():
        for k, row in rows.items():
            lines.append(f"| {variant} | {k} | {row['images_per_s']:.1f} | {row['per_core']:.1f} | {row['scaling']:.2f} |")
    body = "\n".join(lines)
    where = f"{results['machine']}; load average before/after {results['load'][0]:.2f} / {results['load'][1]:.2f}"
    section = (
        f"The pipeline alone (a trivial model: one 1×1 convolution), {count} JPEG photos of 400×300, one torch thread, "
        f"k readers and k writers (unless the row says none), on k cores ({where}); photos and outputs in a "
        f"{results['scratch']} folder; `python benchmarks/bench_pipeline.py`:\n\n{body}\n"
    )
    page = f"# The explain pipeline's own capacity\n\n{__doc__.split(chr(10) + chr(10), 1)[1]}\n## Results\n\n{section}"
    return page, section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--cores", type=int, default=2, help="measure 1..CORES cores (default: 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--photos", type=Path, default=Path(".photos"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--scratch", type=Path, default=None, help="folder for photos and outputs (default: RAM, /dev/shm, if it has room)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 24 photos, one round")
    parser.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        folder, one, out, cores, variant = args.child
        child(Path(folder), Path(one), Path(out), int(cores), variant)
        return
    if args.quick:
        args.count, args.repeats = min(args.count, 24), 1
    load_before = load_average()
    cores = sorted({1, *range(2, args.cores + 1)})
    with scratch_folder("normgrad-pipeline-", args.scratch) as tmp:
        scratch = Path(tmp)
        scratch_fs = file_system(scratch)
        paths = prepare_photos(scratch / "photos", args.count, photo_root=args.photos)
        (scratch / "one").mkdir()
        shutil.copy(paths[0], scratch / "one" / paths[0].name)
        table = measure(scratch / "photos", scratch / "one", scratch, len(paths), cores, args.repeats)
    results = {"machine": machine(), "count": args.count, "table": table, "load": (load_before, load_average()), "scratch": scratch_fs}
    page, section = report(table, args.count, results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks-pipeline.md").write_text(page)
    (args.out / "benchmarks-pipeline.json").write_text(json.dumps(results, indent=1) + "\n")
    write_section(args.out / "benchmarks.md", "pipeline", section)
    print(page)


if __name__ == "__main__":
    main()
