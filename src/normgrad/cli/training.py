"""``normgrad eval training``: the training-impact study (per-image, learning-rate axis, ROAR/KAR) and its report.

Registered under ``normgrad eval`` by :mod:`normgrad.cli.evaluate`; the study itself is :mod:`normgrad.evaluation.training`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from normgrad.cli.common import int_at_least, non_negative_int, positive_int

EXAMPLES = """examples:
  make data                                        # Fashion-MNIST from Debian's dataset-fashion-mnist
  normgrad eval training --out docs                # the full study (about an hour on 2 CPU cores)
  normgrad eval training --out /tmp/t --quick      # a few minutes: checks that everything runs, not for conclusions
  normgrad eval training --out runs/ --cache ~/models --data ~/fashion-mnist --images 2000 --roar-seeds 5"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``training`` under ``normgrad eval``."""
    parser = subparsers.add_parser(
        "training",
        help="Does meta-saliency find the pixels that matter for training? Per-image study, lr axis, ROAR/KAR; writes training.md.",
        description="Trains a small CNN on Fashion-MNIST (cached), runs the per-image training-impact study on it and on the "
        "embedded ImageNet model with real photos, retrains from scratch for ROAR and KAR, and writes training.md, "
        "training.json and figures with a computed 'what holds' section.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for training.md, training.json and figures (default: docs)")
    parser.add_argument("--quick", action="store_true", help="CI-sized run (a few minutes); too small for conclusions")
    parser.add_argument(
        "--cache", type=Path, default=None, help="folder for the trained model (default: $NORMGRAD_CACHE or ~/.cache/normgrad)"
    )
    parser.add_argument("--retrain", action="store_true", help="train the model again even if it is cached")
    parser.add_argument("--data", type=Path, default=None, help="folder with the Fashion-MNIST IDX files (default: Debian's)")
    parser.add_argument(
        "--images", type=int_at_least(2), default=None, help="test images in the per-image study (default: 1000; quick: 40)"
    )
    parser.add_argument("--roar-seeds", type=positive_int, default=None, help="training seeds per ROAR/KAR point (default: 3)")
    parser.add_argument("--no-imagenet", action="store_true", help="skip the second regime (EfficientNet-Lite0 on photos)")
    parser.add_argument("--no-roar", action="store_true", help="skip ROAR/KAR retraining")
    parser.add_argument(
        "--jobs",
        type=non_negative_int,
        default=None,
        help="worker processes retraining for ROAR/KAR while the rest runs (default: 1; 0: none)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's, 1 with --quick; 1 is much faster on a CPU shared with other work)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from normgrad.evaluation.training.study import QUICK, StudyConfig, run_study

    config = QUICK if args.quick else StudyConfig()
    if args.images is not None:
        config = replace(config, images=args.images)
    if args.roar_seeds is not None:
        config = replace(config, roar_seeds=tuple(range(args.roar_seeds)))
    config = replace(config, imagenet=not args.no_imagenet, roar=not args.no_roar)
    if args.jobs is not None:
        config = replace(config, jobs=args.jobs)
    threads = args.threads if args.threads is not None else (1 if args.quick else None)  # quick: small models, a shared CPU
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    document = run_study(
        config, args.out, data=args.data, cache=args.cache, retrain=args.retrain, log=lambda message: print(message, file=sys.stderr)
    )
    for claim in document["claims"]:
        d = claim["difference"]
        interval = f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        print(f"- {claim['claim']} [{claim['regime']}, {claim['measure']}]: {claim['verdict']} ({interval})")
    return 0
