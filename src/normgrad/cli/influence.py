"""``normgrad influence``: which training images, and which of their pixels, drive each test image's prediction.

A thin layer over :func:`normgrad.tracin.folder.run_influence`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from normgrad.cli.common import (
    add_model_options,
    check_device,
    check_weights,
    counter,
    int_between,
    parse_layers,
    positive_float,
    positive_int,
    say,
)
from normgrad.tracin.product import MAX_TOP_K

EXAMPLES = """examples:
  normgrad influence photos/ --train train/ --model torchvision:resnet18 --weights net.pth --num-classes 10 --out influence/
  normgrad influence test/*.png --train train/ --model timm:resnet18 --weights final.pth \\
      --checkpoints epoch1.pth epoch2.pth epoch3.pth --lr 0.1 0.05 0.01 --layers layer3,layer4 --top-k 8 --out influence/

--train is a folder with one subfolder per class, named by the class index (0, 1, ...) or the model's class name."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "influence",
        help="Training-data attribution at the pixel level: each test image's top proponents and opponents, with maps.",
        description="TracInCP (sum over checkpoints of lr × gradient dot product) on the chosen layers, split over the "
        "locations of each training image: the test image's top proponents and opponents with signed pixel maps.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("tests", nargs="+", help="test images: files, folders or globs")
    parser.add_argument("--train", required=True, type=Path, help="training images: a folder with one subfolder per class")
    parser.add_argument("--out", required=True, type=Path, help="output folder (summary.json, per-image .png/.npy, index.html)")
    add_model_options(parser)
    parser.add_argument("--num-classes", type=positive_int, default=None, help="classes of a torchvision/timm model with other weights")
    parser.add_argument("--checkpoints", nargs="+", default=[], help="state dict files of the training run (default: --weights only)")
    parser.add_argument("--lr", nargs="+", type=positive_float, default=[1.0], help="learning rate: one, or one per checkpoint")
    parser.add_argument("--layers", default=None, help="comma-separated layer names (default: the model's default layers)")
    parser.add_argument("--extract", default="conv1x1", choices=["conv1x1", "scaling", "layer"], help="the weight split (default: conv1x1)")
    parser.add_argument(
        "--top-k", type=int_between(1, MAX_TOP_K), default=5, help="proponents and opponents per test image (default: 5, at most 100)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=64, help="training images per forward/backward (default: 64)")
    parser.add_argument("--overwrite", action="store_true", help="start the output folder afresh")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from normgrad.errors import NormGradError
    from normgrad.tracin.folder import InfluenceRequest, run_influence

    check_weights(args.weights)
    if not args.train.is_dir():  # before the model loads
        raise NormGradError(f"--train {args.train} is not a folder; give a folder with one subfolder of images per class")
    layers = parse_layers(args.layers)
    request = InfluenceRequest(
        tests=tuple(args.tests), train=args.train, out=args.out, model=args.model, weights=None if args.weights == "none" else args.weights,
        num_classes=args.num_classes,
        device=check_device(args.device), checkpoints=tuple(args.checkpoints), lr=tuple(args.lr),
        layers=tuple(layers) if layers else None, extract=args.extract, top_k=args.top_k, batch_size=args.batch_size,
        overwrite=args.overwrite,
    )  # fmt: skip
    manifest = run_influence(request, progress=lambda total, what: counter(total, what, "img"))
    say(f"{len(manifest['images'])} test images: {args.out / 'summary.json'}; gallery: {args.out / 'index.html'}")
    return 0
