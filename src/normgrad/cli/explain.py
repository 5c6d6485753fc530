"""``normgrad explain``: saliency maps for images, folders and globs; resumable; sharded under ``torchrun``.

Per image ``<name>.png`` (the map over the photo, at its pixel size) and
``<name>.npy`` (the float32 map, original height × width); ``summary.json``
is the folder's manifest (:mod:`normgrad.store`); ``index.html`` is its
gallery (:mod:`normgrad.gallery`), updated after each batch.  Every option is checked
before the model loads, layers and class names right after, and all of it
before anything is written.  Images that cannot be explained are skipped
with one line each (exit status 1); errors that stop the run are one line
(exit status 2).

This module is the parser, the options object built from it and the table printed: the run is
:func:`normgrad.run.run` (``normgrad.explain`` in Python).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from normgrad.cli import explain_clips
from normgrad.cli.common import add_meta_options, add_model_options, command, non_negative_int, positive_int
from normgrad.run import COMBINE_CHOICES, MAP_DTYPES, OVERLAY_FORMATS, PREDICT_AT, STORAGES, TASKS, ExplainOptions, RunResult
from normgrad.run import run as run_explain
from normgrad.run.report import printable, say
from normgrad.store import OUTPUT_KINDS

EXAMPLES = """examples:
  normgrad explain cat.jpg                                  # the default (normgrad.defaults), embedded model
  normgrad explain photos/ --method selective --out maps/ --batch-size 16 --workers 4
  normgrad explain "photos/**/*.jpg" --out maps/ --resume             # continue after an interruption
  torchrun --nproc-per-node 2 -m normgrad explain photos/ --out maps/   # shard across processes
  normgrad explain cat.jpg --method meta --lr 0.0025 --target "tiger cat"
  normgrad explain street.jpg --model hf:segformer-folder --task segment --target car --region 40,60,200,180
  normgrad explain cat.jpg --method conv3x3+max --layers blocks.2,blocks.4 --combine none
  normgrad explain cat.jpg --model torchvision:resnet50 --weights resnet50.pth --method gradcam
  normgrad explain street.jpg --task detect --model torchvision:fasterrcnn_resnet50_fpn --weights frcnn.pth --min-score 0.7
  normgrad explain photos/ --out maps/ --save-layers       # each layer's map too; open maps/index.html

outputs mirror the inputs' paths below their folder (photos/a/cat.jpg -> maps/a/cat.png, .npy);
files normgrad did not write are never replaced without --overwrite; --resume skips images done with
the same settings and redoes changed inputs, failed images and missing or truncated outputs;
--resume --overwrite also redoes images made with other settings. Exit status: 0 all explained,
1 some images skipped (one line each), 2 error, 130 interrupted."""


def add_parser(subparsers: Any) -> None:
    parser = command(subparsers, "explain", "Saliency maps for images: <name>.png overlays, <name>.npy maps and summary.json.", EXAMPLES)
    parser.add_argument(
        "images",
        nargs="+",
        help="image files (JPEG, PNG, WebP, TIFF, ...), folders (searched recursively) or quoted globs; "
        "or videos (.mp4, .avi, .mov, .mkv, .webm) and volumes (.npy, .nii, .nii.gz)",
    )
    add_model_options(parser)
    parser.add_argument(
        "--method",
        default=None,
        help="normgrad, selective, EXTRACT+AGGREGATE, meta[:BASE], adversarial[:BASE], gradient, input_x_gradient, "
        "guided_backprop, integrated_gradients, gradcam, center, random (default: the model's default, normgrad.defaults: "
        "selective at the last stride-16 layer x gradient x activation at the two deepest block outputs)",
    )
    parser.add_argument(
        "--layers", default=None, help="comma-separated layer names, or 'auto' (the default's layers; with --method: the stage outputs)"
    )
    parser.add_argument(
        "--size",
        type=positive_int,
        default=None,
        help="shorter side of the model input in pixels (default: the photo's own, kept between the model's size and 2x it)",
    )
    parser.add_argument("--combine", default="product", choices=COMBINE_CHOICES, help="how layer maps become one map (default: product)")
    parser.add_argument(
        "--min-score", type=float, default=None, help="--task detect: explain the detections scoring at least this (default: 0.5)"
    )
    parser.add_argument(
        "--max-detections", type=positive_int, default=None, help="--task detect: at most this many per photo, best first (default: 10)"
    )
    parser.add_argument("--target", default=None, help="'auto' (the predicted class, default), a class index, or a class name")
    parser.add_argument(
        "--task",
        default="classify",
        choices=TASKS,
        help="classify (default); detect: a torchvision detector's detections above --min-score, one map each, boxes drawn; "
        "segment: explain --target's scores summed over --region (or where the model predicts it) of a segmenter, "
        "writing <name>_mask.png, the predicted mask, beside the map",
    )
    parser.add_argument("--region", type=region_box, default=None, help="x0,y0,x1,y1: the box explained (image pixels), --task segment")
    parser.add_argument("--top-k", type=non_negative_int, default=5, help="predictions listed per image (default: 5)")
    parser.add_argument("--out", type=Path, default=Path("normgrad-out"), help="output folder (default: normgrad-out)")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="images per forward pass (default: chosen from the activations' memory and the device: at most 4 on the CPU)",
    )
    add_meta_options(parser)
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=None,
        help="background processes reading images (default: 2 on the CPU, none on 2 cores or fewer; 3/4 of the cores on CUDA)",
    )
    parser.add_argument(
        "--save-layers", action="store_true", help="also write each layer's map (<name>_<layer>.png/.npy) besides the combined one"
    )
    parser.add_argument("--no-gallery", action="store_true", help="do not write the gallery (OUT/index.html and OUT/gallery/)")
    parser.add_argument(
        "--writers",
        type=non_negative_int,
        default=None,
        help="background threads rendering, encoding and writing outputs (default: as --workers; 0: none)",
    )
    parser.add_argument("--no-overlay", action="store_true", help="do not write the overlays")
    parser.add_argument(
        "--overlay-format",
        choices=OVERLAY_FORMATS,
        default="png",
        help="the overlays' format: png (lossless, default) or jpg (quality 90, 4:4:4: about 5x faster to encode and half the size)",
    )
    parser.add_argument("--no-npy", action="store_true", help="do not write the .npy maps")
    parser.add_argument(
        "--map-dtype",
        choices=MAP_DTYPES,
        default="float32",
        help="number type of the .npy maps (default: float32); float16 halves them, for combined maps in [0, 1] only",
    )
    parser.add_argument(
        "--storage",
        choices=STORAGES,
        default="files",
        help="where the maps go: a .npy file per map (default), or shards: each process's maps in one file OUT/shards/*.bin "
        "(for datasets; read them with normgrad.open_run)",
    )
    parser.add_argument(
        "--predict-at",
        choices=PREDICT_AT,
        default="model",
        help="size of the input the predictions (and the auto target) come from: the model's own (default; one extra "
        "forward pass without gradient) or the size explained (no extra pass)",
    )
    parser.add_argument("--resume", action="store_true", help="continue: skip images already explained in --out with the same settings")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start --out's record afresh, replacing files in the way (never an input); with --resume: redo only what was "
        "made with other settings or is in the way",
    )
    parser.add_argument(
        "--frames", type=positive_int, default=16, help="videos and volumes: frames (slices) per clip, sampled evenly (default: 16)"
    )
    parser.set_defaults(run=run)


def options_from(args: argparse.Namespace) -> ExplainOptions:
    """The typed options of ``args`` (the namespace stops here)."""
    return ExplainOptions(
        model=args.model,
        weights=args.weights,
        device=args.device,
        method=args.method,
        layers=args.layers,
        size=args.size,
        combine=args.combine,
        target=args.target,
        top_k=args.top_k,
        batch_size=args.batch_size,
        lr=args.lr,
        steps=args.steps,
        workers=args.workers,
        writers=args.writers,
        save_layers=args.save_layers,
        gallery=not args.no_gallery,
        overlay=not args.no_overlay,
        overlay_format=args.overlay_format,
        npy=not args.no_npy,
        map_dtype=args.map_dtype,
        storage=args.storage,
        resume=args.resume,
        overwrite=args.overwrite,
        predict_at=args.predict_at,
        task=args.task,
        min_score=args.min_score,
        max_detections=args.max_detections,
        region=args.region,
    )


def region_box(text: str) -> tuple[int, int, int, int]:
    """``x0,y0,x1,y1`` as four non-negative ints (argparse reports a bad one)."""
    parts = text.split(",")
    if len(parts) != 4 or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected x0,y0,x1,y1 (four non-negative integers); got {text!r}")
    x0, y0, x1, y1 = (int(part) for part in parts)
    if not (x0 < x1 and y0 < y1):
        raise argparse.ArgumentTypeError(f"expected x0 < x1 and y0 < y1; got {text!r}")
    return x0, y0, x1, y1


def run(args: argparse.Namespace) -> int:
    if explain_clips.all_clips(args.images):  # videos (.mp4, ...) and volumes (.npy, .nii): per-frame overlays, strip, animation
        return explain_clips.run(args)
    options = options_from(args)
    with terminate_as_interrupt():
        result = run_explain(args.images, args.out, options)
    if result.rank != 0:  # rank 0 reports
        return 0
    _print_table(result, args.out, options)
    if result.gallery is not None:
        print(f"gallery: {result.gallery} (open it in a browser)")
    bad = len(result.failed)
    if bad and result.distributed:
        say(f"normgrad: {bad} image(s) skipped (listed in {args.out / 'summary.json'} under 'failed'); exit status 0 under torchrun")
        return 0
    return 1 if bad else 0


def _print_table(result: RunResult, out: Path, options: ExplainOptions) -> None:
    records = result.records
    names = [printable(Path(r["image"]).name) for r in records]  # control characters quoted: one line per image
    width = max([len(name) for name in names] + [5])
    print(f"{'image':{width}s}  {'prediction':28s} {'p':>6s}  {'explained':24s}  output")
    for name, r in zip(names, records):
        best = r["predictions"][0] if r["predictions"] else r["target"]
        first = r["outputs"][0]
        output = printable(str(out / next(first[k] for k in (*OUTPUT_KINDS, "shard") if k in first)))
        print(f"{name:{width}s}  {best['name'][:28]:28s} {best['probability']:6.1%}  {r['target']['name'][:24]:24s}  {output}")
    earlier = f", {result.done_earlier} of them done earlier" if result.done_earlier else ""
    maps = f"{options.map_dtype} maps in shards/" if options.storage == "shards" else f"{options.map_dtype} .npy maps"
    overlays = f"{options.overlay_format.upper()} overlays"
    written = [*([overlays] if options.overlay else []), *([maps] if options.npy else []), "summary.json"]
    print(f"explained {len(records)} image(s) into {out}/{earlier} ({', '.join(written)})")
    if records:
        print(closing_line(result.settings, records[0]))


def closing_line(settings: dict, record: dict) -> str:
    """What the table's prediction, p and explained columns are, for the run's task (``record``: an example)."""
    task = settings.get("task", "classify")
    if task == "detect":  # the detector resizes each photo itself
        return ("prediction and p: each photo's best detection and its score; the maps explain all detections above "
                "--min-score (<name>) and each one (<name>_det<k>), listed in summary.json")  # fmt: skip
    explained = _size(record.get("explained_at"))
    if task == "segment":  # one forward at the size explained gives both the classes predicted and the maps
        region = "the --region box" if settings.get("region") else "the pixels where the model predicts it"
        return (f"prediction and p: the class the model predicts on the most pixels and its share of them, at the size "
                f"explained (e.g. {explained}); the maps explain the scores of the class under 'explained' summed over "
                f"{region} (each record's explained_at in summary.json)")  # fmt: skip
    where = "the model's own input size" if settings.get("predict_at") == "model" else "the size explained"
    return (f"prediction and p: at {where} (e.g. {_size(record.get('predicted_at'))}); the maps explain the class under "
            f"'explained' (--target, else the prediction) at {explained} (each record's predicted_at and explained_at "
            "in summary.json)")  # fmt: skip


def _size(size: Any) -> str:
    return f"{size[0]}x{size[1]}" if isinstance(size, (list, tuple)) and len(size) == 2 else "?"


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's stop) ends the run as Ctrl-C does: files and records complete, the gallery
    told, one line, exit status 130 (in the main thread only; Python's default would exit without any of it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
