"""``normgrad explain`` end to end: throughput against the engine alone, start-up, per-stage costs, PNG compression.

1. **Photos**: ``--count`` real photos of ``--photo-size`` (400×300), JPEG
   quality 90, cropped from the packaged photos of the grid benchmark
   (``make benchmark-photos``; scikit-image's bundled photos otherwise),
   several crops per photo, each file different.
2. **Throughput** (interleaved rounds of subprocesses, as a user runs them):
   ``normgrad explain FOLDER --batch-size B`` (all photos) and the same with
   one photo; the steady state per image is ``(T_all − T_one) / (count − 1)``.
   The engine alone: a process that preprocesses the same photos with the
   same preprocessing, forms the same batches, and times the engine call
   explain makes (same method, layers and target rule) on them, per image.
   Ratio = engine per image / explain per image (1.0: explain costs nothing
   beyond the saliency).  Variants: the output options and thread counts.
3. **Start-up**: ``python -c "import torch"``, the floor ``import torch`` +
   model load (one process), ``normgrad --help``, an argument error, and a
   one-photo ``normgrad explain``.
4. **Per-stage costs** in this process, per image: CPU milliseconds of each
   stage run alone on one thread (the engine: wall time with all threads).
5. **PNG encoding**: encode time and size of the overlays with normgrad's
   encoder (Up filter; ISA-L's deflate where ``isal`` is installed, zlib's
   Huffman-only otherwise) per level, and Pillow's (adaptive filters) per
   level and strategy.

Photos and outputs live in RAM (``/dev/shm``) when it has room (``--scratch DIR`` chooses): a disk's own
variance is not explain's cost (``measure.scratch_folder``).

Usage: ``python benchmarks/bench_explain.py [--quick] [--device cuda] [--out docs]``; writes
``OUT/benchmarks-explain.md`` and ``.json`` and the end-to-end section of ``OUT/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from measure import file_system, load_average, machine, scratch_folder, synchronize, write_section  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
PHOTO_SIZE = (400, 300)
VARIANTS = {  # name -> extra explain flags, measured once per round after the main configuration
    "--predict-at explained (no forward at the model's own size)": ["--predict-at", "explained"],
    "--overlay-format jpg": ["--overlay-format", "jpg"],
    "--no-overlay": ["--no-overlay"],
    "--no-gallery": ["--no-gallery"],
    "--workers 1 --writers 1": ["--workers", "1", "--writers", "1"],
    "--workers 2 --writers 2": ["--workers", "2", "--writers", "2"],
}


# ----------------------------------------------------------------------------- photos


def prepare_photos(folder: Path, count: int, size: tuple[int, int] = PHOTO_SIZE, photo_root: Path = Path(".photos")) -> list[Path]:
    """``count`` different JPEG crops of real photos at ``size`` (width, height) in ``folder``; the scene photos of
    the grid benchmark when unpacked, scikit-image's bundled photos otherwise."""
    from PIL import Image

    from normgrad.evaluation.benchmark_photos import photo_files
    from normgrad.images import load_image

    scenes = [f.path for f in photo_files(photo_root)[0] if f.kind == "scene"]
    if not scenes:
        raise SystemExit("no photos found: install scikit-image or run `make benchmark-photos`")
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    paths = []
    for k in range(count):
        photo = load_image(scenes[k % len(scenes)])
        variant = k // len(scenes)  # quasi-random crops: every file differs
        scale = 1.0 - 0.5 * ((variant * 0.618034) % 1.0)
        fx, fy = (variant * 0.7548777) % 1.0, (variant * 0.5698403) % 1.0
        w = min(photo.width, photo.height * width / height) * scale
        h = w * height / width
        left, top = (photo.width - w) * fx, (photo.height - h) * fy
        crop = photo.crop((round(left), round(top), round(left + w), round(top + h))).resize(size, Image.Resampling.LANCZOS)
        path = folder / f"photo{k:04d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- subprocess timings


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def seconds(argv: list[str], check: bool = True) -> float:
    start = time.perf_counter()
    run = subprocess.run(argv, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if check and run.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({run.returncode}): {run.stderr.decode()[-2000:]}")
    return elapsed


EXPLAIN_ARGS: list[str] = []  # --explain-args: given to every explain run (workers, writers)


def explain_argv(inputs: Path, out: Path, model: list[str], batch_size: int | None, extra: list[str] = ()) -> list[str]:
    """``normgrad explain``'s command line; ``batch_size=None``: explain's own choice (no ``--batch-size``)."""
    shutil.rmtree(out, ignore_errors=True)
    size = [] if batch_size is None else ["--batch-size", str(batch_size)]
    return [sys.executable, "-m", "normgrad", "explain", str(inputs), "--out", str(out), *size, *model, *EXPLAIN_ARGS, *extra]


def best_engine(folder: Path, model: list[str], sizes: list[int]) -> tuple[float, int]:
    """The engine alone at each batch size: (seconds per image at the fastest, that batch size)."""
    timings = {size: engine_alone(folder, model, size)["per_image"] for size in sizes}
    best = min(timings, key=timings.get)
    return timings[best], best


def engine_alone(folder: Path, model: list[str], batch_size: int) -> dict:
    """The engine alone in a fresh process (see ``--engine-alone``): seconds per image."""
    argv = [sys.executable, __file__, "--engine-alone", str(folder), "--batch-size", str(batch_size), *model]
    run = subprocess.run(argv, env=environment(), capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"engine-alone failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def model_args(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model, "--weights", args.weights, "--device", args.device]


def throughput(args: argparse.Namespace, folder: Path, one: Path, scratch: Path, variants: dict[str, list[str]]) -> dict:
    """Interleaved rounds: the engine alone, explain (all, one), the engine alone again (their mean: drift cancels), then
    each variant; medians, per-round ratios and the ratio of the medians."""
    model = model_args(args)
    count = len(list(folder.glob("*.jpg")))
    rounds: list[dict] = []
    explain_size = None if args.explain_batch_size == "auto" else int(args.explain_batch_size)
    engine_sizes = [int(size) for size in args.engine_batch_sizes.split(",")] if args.engine_batch_sizes else [args.batch_size]
    for r in range(args.repeats):
        row: dict[str, Any] = {}
        before, best = best_engine(folder, model, engine_sizes)  # the engine before and after explain:
        row["all"] = seconds(explain_argv(folder, scratch / "out-all", model, explain_size))  # the machine's drift cancels
        row["one"] = seconds(explain_argv(one, scratch / "out-one", model, explain_size))
        after, best_after = best_engine(folder, model, engine_sizes)
        row["engine"], row["engine_batch_sizes"] = (before + after) / 2, [best, best_after]
        for name, flags in variants.items():
            row[name] = seconds(explain_argv(folder, scratch / "out-variant", model, explain_size, flags))
        rounds.append(row)
        steady = (row["all"] - row["one"]) / (count - 1)
        print(f"  round {r + 1}: explain {row['all']:.1f} s, one photo {row['one']:.1f} s, steady {1000 * steady:.1f} ms/img, "
              f"engine {1000 * row['engine']:.1f} ms/img, ratio {row['engine'] / steady:.3f}", flush=True)  # fmt: skip
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0] if key != "engine_batch_sizes"}
    per_image = {key: (median[key] - median["one"]) / (count - 1) for key in ["all", *variants]}
    ratios = [r["engine"] / ((r["all"] - r["one"]) / (count - 1)) for r in rounds]
    return {"count": count, "rounds": rounds, "median": median, "steady_per_image": per_image, "ratios": ratios,
            "ratio": statistics.median(ratios), "ratio_of_medians": median["engine"] / per_image["all"],
            "engine_per_image": median["engine"]}  # fmt: skip


def startup(args: argparse.Namespace, one: Path, scratch: Path) -> dict:
    weights = _weights(args.weights)
    load = f"import torch; from normgrad.models import load; load({args.model!r}, weights={weights!r}, device={args.device!r})"
    commands = {
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "floor: import torch + model load": [sys.executable, "-c", load],
        "normgrad --help": [sys.executable, "-m", "normgrad", "--help"],
        "an argument error (--batch-size 0)": [sys.executable, "-m", "normgrad", "explain", str(one), "--batch-size", "0"],
        "normgrad explain (one photo)": explain_argv(one, scratch / "out-start", model_args(args), None),
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats + 2):
        for name, argv in commands.items():
            if name == "normgrad explain (one photo)":
                argv = explain_argv(one, scratch / "out-start", model_args(args), None)
            times[name].append(seconds(argv, check="error" not in name))
    return {name: statistics.median(t) for name, t in times.items()}


def _weights(weights: str) -> str | None:
    return None if weights.lower() == "none" else weights


# ----------------------------------------------------------------------------- in-process stages


def setup_model(model: str, weights: str, device: str) -> tuple[Any, Any, Any, list[str]]:
    """The model, explain's preprocessing, method and layers when no option is given (the default)."""
    from normgrad.defaults import defaults_for
    from normgrad.models import load
    from normgrad.run.plan import input_preprocess

    loaded = load(model, weights=_weights(weights), device=device)
    defaults = defaults_for(loaded)
    return loaded, input_preprocess(loaded, None), defaults.method, list(defaults.layers)


def preprocessed_batches(paths: list[Path], preprocess: Any, batch_size: int) -> list[list[Any]]:
    """Items read and batched exactly as explain does (in this process)."""
    from normgrad.run.loading import batches, loader

    entries = [(i, path, path.stem) for i, path in enumerate(paths)]
    return list(batches(loader(entries, preprocess, 0), batch_size, lambda item: None))


def run_engine_alone(folder: Path, model: str, weights: str, device: str, batch_size: int) -> dict:
    """Time the engine call of explain's default on explain's batches, inputs already on the device (one cold pass included)."""
    from normgrad.run.layout import run_layout

    loaded, preprocess, method, layers = setup_model(model, weights, device)
    batches = preprocessed_batches(sorted(folder.glob("*.jpg")), preprocess, batch_size)
    layout = run_layout(loaded, preprocess, device)  # the memory layout explain gives its batches
    tensors = [torch.stack([item.tensor for item in batch]).to(device).contiguous(memory_format=layout) for batch in batches]
    count = sum(x.shape[0] for x in tensors)
    synchronize(device)
    start = time.perf_counter()
    for x in tensors:
        method(loaded.model, x, None, layers=layers)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "images": count, "per_image": elapsed / count, "channels_last": layout == torch.channels_last}


def cpu_ms(fn: Any, count: int, repeats: int = 3) -> float:
    """Best CPU milliseconds per item of ``fn()`` over ``repeats`` runs (this thread's CPU time)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return 1000 * best / count


def stages(args: argparse.Namespace, paths: list[Path]) -> dict[str, tuple[float, str]]:
    """CPU ms per image of each stage alone (one thread); the engine in wall ms with the run's threads."""
    from normgrad import pipeline
    from normgrad.images import load_image
    from normgrad.run.layout import run_layout
    from normgrad.run.records import Explained, outputs
    from normgrad.store import OutputStore, Work, encode_npy, encode_png
    from normgrad.viz import overlay

    loaded, preprocess, method, layers = setup_model(args.model, args.weights, args.device)
    sample = paths[: args.batch_size]
    n = len(sample)
    threads = torch.get_num_threads()
    result: dict[str, tuple[float, str]] = {}
    torch.set_num_threads(1)
    photos = [load_image(p) for p in sample]
    result["read and decode (load_image)"] = (cpu_ms(lambda: [load_image(p) for p in sample], n), "reader processes")
    prepare = lambda: [pipeline.prepare(p, preprocess) for p in photos]  # noqa: E731
    result["preprocess (resize, normalise, checks)"] = (cpu_ms(prepare, n), "reader processes")
    x = torch.stack([pipeline.prepare(p, preprocess) for p in photos]).to(args.device)
    x = x.contiguous(memory_format=run_layout(loaded, preprocess, args.device))

    from normgrad.run.loading import loader

    entries = [(i, p, p.stem) for i, p in enumerate(paths[: 4 * n])]
    items = loader(entries, preprocess, 2)
    next(items)  # the readers' start-up is a one-off
    start = time.process_time()
    later = sum(1 for _ in items)
    result["hand-over from the readers (unpickling)"] = (1000 * (time.process_time() - start) / later, "main thread")

    torch.set_num_threads(threads)
    usable, prediction, targets, maps = pipeline.explain_batch(method, loaded.model, x, None, layers)  # warm-up
    synchronize(args.device)
    start = time.perf_counter()
    for _ in range(2):
        pipeline.explain_batch(method, loaded.model, x, None, layers)
    synchronize(args.device)
    result[f"engine, with predictions (wall, {threads} threads)"] = (1000 * (time.perf_counter() - start) / (2 * n), "main thread")
    torch.set_num_threads(1)
    size = (photos[0].height, photos[0].width)
    result["upsample and combine"] = (cpu_ms(lambda: pipeline.to_image_size(maps, size, "product"), n), "main thread")
    planes = pipeline.to_image_size(maps, size, "product")[pipeline.COMBINED][:, 0].numpy()
    result["overlay (lookup table, blend)"] = (cpu_ms(lambda: [overlay(p, m) for p, m in zip(photos, planes)], n), "writer threads")
    overlays = [overlay(p, m) for p, m in zip(photos, planes)]
    result["PNG encoding"] = (cpu_ms(lambda: [encode_png(o) for o in overlays], n), "writer threads")
    from normgrad.gallery import pictures

    result["gallery pictures (thumbnail, photo, map; JPEG)"] = (
        cpu_ms(lambda: [pictures.render(p, [m]) for p, m in zip(photos, planes)], n),
        "writer threads",
    )
    result["NPY encoding, float32"] = (cpu_ms(lambda: [encode_npy(m) for m in planes], n), "writer threads")
    result["NPY encoding, float16 (instead)"] = (cpu_ms(lambda: [encode_npy(m.astype(np.float16)) for m in planes], n), "writer threads")
    work = [Work(i, str(path), path.stem, [f"{path.stem}.png", f"{path.stem}.npy"]) for i, path in enumerate(sample)]
    built = []
    start = time.thread_time()
    for i in range(n):
        target = int(targets[i])
        explained = Explained(i, sample[i].stem, str(sample[i]), photos[i].size, {pipeline.COMBINED: planes[i]},
                              prediction.top(i, 5, loaded.class_name),
                              pipeline.entry(target, float(prediction.probabilities[i, target]), loaded.class_name),
                              photos[i].size, photos[i].size, photo=photos[i])  # fmt: skip
        built.append(outputs(explained, work[i].name, run="bench", rank=0, identity=None, layers=layers, overlay=True, npy=True,
                             map_dtype="float32"))  # fmt: skip
    whole = 1000 * (time.thread_time() - start) / n
    parts = sum(result[k][0] for k in ("overlay (lookup table, blend)", "PNG encoding", "NPY encoding, float32"))
    result["record (predictions, JSON fields)"] = (max(whole - parts, 0.0), "writer threads")
    with tempfile.TemporaryDirectory() as folder:
        store = OutputStore(folder, "bench")
        try:
            start = time.thread_time()
            for i, (files, record) in enumerate(built):
                store.save(work[i], files, record)
            result["write (journal claim, 2 atomic files, record)"] = (1000 * (time.thread_time() - start) / n, "writer threads")
        finally:
            store.close()
    torch.set_num_threads(threads)
    return result


def png_levels(paths: list[Path], count: int = 16) -> list[tuple[str, int, float, float]]:
    """(encoder, level, ms per overlay, KiB) on real overlays: normgrad's ``encode_png`` and Pillow's PNG encoder."""
    import io

    from normgrad.images import load_image
    from normgrad.store import encode as encodings
    from normgrad.store import encode_png
    from normgrad.viz import overlay

    def pillow(image: Any, level: int, strategy: int) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=level, compress_type=strategy)
        return buffer.getvalue()

    rng = np.random.default_rng(0)
    overlays = []
    for path in paths[:count]:
        photo = load_image(path)
        small = torch.from_numpy(rng.random((1, 1, photo.height // 16, photo.width // 16), dtype=np.float32))
        overlays.append(overlay(photo, torch.nn.functional.interpolate(small, size=(photo.height, photo.width), mode="bilinear")))

    def without_isal(image: Any, level: int) -> bytes:
        with mock.patch.object(encodings, "isal_zlib", None):  # the encoder where the vision extra's isal is not installed
            return encode_png(image, level)

    encoders = [("normgrad (Up filter; zlib, Huffman only)", without_isal, range(0, 4))]
    if encodings.isal_zlib is not None:
        encoders.insert(0, ("normgrad (Up filter; ISA-L deflate, the default where installed)", encode_png, range(1, 4)))
    encoders += [(f"Pillow ({name})", lambda o, level, k=k: pillow(o, level, k), range(10)) for name, k in (("default", 0), ("Z_RLE", 3))]
    rows = []
    for name, encode_one, levels in encoders:
        for level in levels:
            sizes = [len(encode_one(o, level)) for o in overlays]
            encode = lambda level=level, encode_one=encode_one: [encode_one(o, level) for o in overlays]  # noqa: E731
            rows.append((name, level, cpu_ms(encode, len(overlays)), statistics.mean(sizes) / 1024))
    return rows


def matplotlib_overlay_ms(paths: list[Path], count: int = 16) -> float:
    """The previous overlay: matplotlib's colormap and a float blend (for comparison)."""
    from matplotlib import colormaps

    from normgrad.images import load_image

    photos = [load_image(p) for p in paths[:count]]
    planes = [np.random.default_rng(i).random((p.height, p.width), dtype=np.float32) for i, p in enumerate(photos)]

    def old() -> None:
        for photo, plane in zip(photos, planes):
            colours = (colormaps["jet"](plane)[..., :3] * 255).astype(np.uint8).astype(np.float32)
            np.clip(0.5 * np.asarray(photo, dtype=np.float32) + 0.5 * colours, 0, 255).astype(np.uint8)

    return cpu_ms(old, len(photos))


# ----------------------------------------------------------------------------- report


def report(args: argparse.Namespace, results: dict) -> tuple[str, str]:
    """The full markdown page and the short end-to-end section of benchmarks.md."""
    t, s, st = results["throughput"], results["startup"], results["stages"]
    explain_flags = ([] if args.explain_batch_size == "auto" else ["--batch-size", args.explain_batch_size]) + EXPLAIN_ARGS
    best = sorted({size for r in t["rounds"] for size in r.get("engine_batch_sizes", [])})
    count, device = t["count"], results["device"]
    command = " ".join(["python benchmarks/bench_explain.py", *map(shlex.quote, sys.argv[1:])])
    header = (
        f"Machine: {results['machine']}; device {device}; load average {results['load'][0]:.2f} before, "
        f"{results['load'][1]:.2f} after. Command: `{command}` (`make bench`). {count} real photos of "
        f"{PHOTO_SIZE[0]}×{PHOTO_SIZE[1]} (JPEG; photos and outputs in a {results.get('scratch', 'unknown')} folder), "
        f"`normgrad explain FOLDER {' '.join(explain_flags)}` with the "
        f"{args.model} model's default (method, layers, input size: normgrad.defaults); medians of {args.repeats} interleaved rounds."
    )
    steady = t["steady_per_image"]["all"]
    rows = [
        "| | per image | images/s | vs the engine alone |",
        "|---|---:|---:|---:|",
        f"| engine alone at its best batch size ({args.engine_batch_sizes} tried; best: {best}), same layers, method, layout; inputs ready "
        f"| {1000 * t['engine_per_image']:.1f} ms | "
        f"{1 / t['engine_per_image']:.1f} | 1.00 |",
        f"| `normgrad explain`, steady state (batch size {args.explain_batch_size}, PNG + float32 NPY) "
        f"| {1000 * steady:.1f} ms | {1 / steady:.1f} | "
        f"**{t['ratio']:.2f}** (median of the rounds: {', '.join(f'{r:.2f}' for r in t['ratios'])}; "
        f"ratio of the medians {t['ratio_of_medians']:.2f}) |",
    ]
    for name in VARIANTS if not args.quick else []:
        if name in t["steady_per_image"]:
            v = t["steady_per_image"][name]
            rows.append(f"| `{name}` | {1000 * v:.1f} ms | {1 / v:.1f} | {t['engine_per_image'] / v:.2f} |")
    start_rows = ["| command | seconds | vs the floor |", "|---|---:|---:|"]
    floor = s["floor: import torch + model load"]
    start_rows += [f"| {name} | {value:.2f} | {value / floor:.2f}× |" for name, value in s.items()]
    stage_rows = ["| stage | ms per image | runs in |", "|---|---:|---|"]
    stage_rows += [f"| {name} | {ms:.2f} | {where} |" for name, (ms, where) in st.items()]
    section = "\n".join(
        [
            f"## End to end: `normgrad explain` on a folder ({device})",
            "",
            header,
            "",
            *rows,
            "",
            "Start-up (one photo; the floor is `import torch` plus loading the model in one process):",
            "",
            *start_rows,
            "",
            "Per-stage costs (CPU ms per image of each stage alone on one thread; the engine: wall time with the run's threads):",
            "",
            *stage_rows,
            "",
            "Details, PNG compression levels and the commands: [benchmarks-explain.md](benchmarks-explain.md).",
            "",
        ]
    )
    png = ["| encoder | level | ms per overlay | KiB |", "|---|---:|---:|---:|"]
    png += [f"| {strategy} | {level} | {ms:.2f} | {kib:.0f} |" for strategy, level, ms, kib in results["png"]]
    rounds = ["| round | explain, all (s) | explain, one photo (s) | engine alone (ms/img) | ratio |", "|---:|---:|---:|---:|---:|"]
    rounds += [f"| {i + 1} | {r['all']:.2f} | {r['one']:.2f} | {1000 * r['engine']:.1f} | {q:.3f} |"
               for i, (r, q) in enumerate(zip(t["rounds"], t["ratios"]))]  # fmt: skip
    page = "\n".join(
        [
            "# Benchmark: `normgrad explain` end to end",
            "",
            section.split("\n", 2)[2],
            "## Rounds",
            "",
            *rounds,
            "",
            f"Steady state per image = (T(all {count} photos) − T(one photo)) / {count - 1}: start-up, the model's probe and "
            "the first batch's one-off costs cancel. The engine alone runs in its own process (before and after explain in "
            "each round; their mean is the round's engine time) on the same preprocessed "
            "photos, batched as explain batches them, with the same method, layers and target rule; its inputs are ready "
            "on the device (explain's reading, hand-over and copies count against explain).",
            "",
            "## PNG encoding (the overlays of real photos)",
            "",
            (
                f"The previous overlay (matplotlib's colormap, float blend): {results['matplotlib_overlay']:.2f} ms per photo; "
                if results["matplotlib_overlay"] is not None
                else ""
            )
            + f"the lookup table: {st['overlay (lookup table, blend)'][0]:.2f} ms per photo.",
            "",
            *png,
            "",
            "## Reproduce",
            "",
            "```bash",
            "make benchmark-photos            # optional: the packaged photos (else scikit-image's)",
            command + "   # this page and the end-to-end section of benchmarks.md",
            "```",
            "",
        ]
    )
    return page, section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=192, help="photos (default: 192)")
    parser.add_argument("--batch-size", type=int, default=16, help="the batch of the per-stage costs (default: 16)")
    parser.add_argument(
        "--explain-batch-size", default="auto", help="explain's --batch-size in the throughput runs (default: auto, explain's own choice)"
    )
    parser.add_argument(
        "--engine-batch-sizes",
        default="1,2,4,8,16",
        help="the engine alone at each of these batch sizes; the fastest is the reference (default: 1,2,4,8,16)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--photos", type=Path, default=Path(".photos"), help="where `make benchmark-photos` unpacked the photos")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--scratch", type=Path, default=None, help="folder for photos and outputs (default: RAM, /dev/shm, if it has room)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 24 photos, one round, no variants")
    parser.add_argument("--no-variants", action="store_true", help="measure the default output options only")
    parser.add_argument("--explain-args", default="", help="extra options for every explain run, e.g. '--workers 8 --writers 4'")
    parser.add_argument("--engine-alone", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    EXPLAIN_ARGS[:] = args.explain_args.split()
    if args.engine_alone is not None:
        print(json.dumps(run_engine_alone(args.engine_alone, args.model, args.weights, args.device, args.batch_size)))
        return
    if args.quick:
        args.count, args.repeats = min(args.count, 24), 1
    load_before = load_average()
    with scratch_folder("normgrad-bench-", args.scratch) as tmp:
        scratch = Path(tmp)
        paths = prepare_photos(scratch / "photos", args.count, photo_root=args.photos)
        (scratch / "one").mkdir()
        shutil.copy(paths[0], scratch / "one" / paths[0].name)
        print(f"{len(paths)} photos in {scratch / 'photos'}; throughput ...", flush=True)
        results: dict[str, Any] = {"machine": machine(), "device": _device_name(args.device), "scratch": file_system(scratch)}
        variants = {} if args.quick or args.no_variants else VARIANTS
        results["throughput"] = throughput(args, scratch / "photos", scratch / "one", scratch, variants)
        print("start-up ...", flush=True)
        results["startup"] = startup(args, scratch / "one", scratch)
        print("stages ...", flush=True)
        results["stages"] = stages(args, paths)
        results["png"] = png_levels(paths)
        try:
            results["matplotlib_overlay"] = matplotlib_overlay_ms(paths)
        except ImportError:  # an accelerator machine without matplotlib
            results["matplotlib_overlay"] = None
    results["load"] = (load_before, load_average())
    page, section = report(args, results)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else "-gpu"
    (args.out / f"benchmarks-explain{suffix}.md").write_text(page)
    (args.out / f"benchmarks-explain{suffix}.json").write_text(json.dumps(results, indent=1) + "\n")
    write_section(args.out / "benchmarks.md", f"explain{suffix}", section)
    print(page)


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return "CPU"


if __name__ == "__main__":
    main()
