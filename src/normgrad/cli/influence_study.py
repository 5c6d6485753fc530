"""``normgrad eval influence``: pixel-level TracIn on Fashion-MNIST with a planted shortcut and planted mislabels.

Registered under ``normgrad eval`` by :mod:`normgrad.cli.evaluate`; the study itself is :mod:`normgrad.evaluation.influence`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from normgrad.cli.common import int_at_least, positive_int

EXAMPLES = """examples:
  make data                                         # Fashion-MNIST from Debian's dataset-fashion-mnist
  normgrad eval influence --out docs                # the full study (60,000 training images)
  normgrad eval influence --out /tmp/i --quick      # a few minutes: checks that everything runs, not for conclusions"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``influence`` under ``normgrad eval``."""
    parser = subparsers.add_parser(
        "influence",
        help="Pixel-level TracIn: patched proponents and patch-pixel AUROC, mislabels by self-influence vs Captum; writes influence.md.",
        description="Trains the Fashion-MNIST CNN with a planted shortcut and planted mislabels (a checkpoint per epoch), "
        "then measures whether patched test images' top proponents are patched and their maps point at the patch, and whether "
        "self-influence finds the mislabels (checked against Captum's TracInCP); writes influence.md, influence.json and figures.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=Path("docs"), help="folder for influence.md, influence.json and figures (default: docs)"
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized run (a few minutes); too small for conclusions")
    parser.add_argument("--data", type=Path, default=None, help="folder with the Fashion-MNIST IDX files (default: Debian's)")
    parser.add_argument("--train-images", type=int_at_least(100), default=None, help="training images (default: 60000; quick: 3000)")
    parser.add_argument("--test-images", type=int_at_least(3), default=None, help="patched test images (default: 100; quick: 20)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from normgrad.evaluation.influence.markdown import claims
    from normgrad.evaluation.influence.study import QUICK, StudyConfig, run_study

    config = QUICK if args.quick else StudyConfig()
    if args.test_images is not None:
        config = replace(config, setup=replace(config.setup, test_images=args.test_images))
    if args.train_images is not None:
        config = replace(config, setup=replace(config.setup, train_images=args.train_images))
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    sizes = "".join(f" --{name}-images {value}" for name, value in (("train", args.train_images), ("test", args.test_images)) if value)
    command = "normgrad eval influence" + (" --quick" if args.quick else "") + sizes + f" --out {args.out}"
    document = run_study(config, args.out, data=args.data, command=command, log=lambda message: print(message, file=sys.stderr))
    for claim, verdict, evidence in claims(document, None):
        print(f"- {claim}: {verdict} ({evidence})")
    return 0
