"""``normgrad eval faithfulness``: ROAD and insertion/deletion for every method and the anchors; writes faithfulness.md.

Registered under ``normgrad eval`` by :mod:`normgrad.cli.evaluate`; the study is :mod:`normgrad.evaluation.faithfulness.study`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from normgrad.cli.common import int_at_least, positive_int

EXAMPLES = """examples:
  make data                                          # Fashion-MNIST from Debian's dataset-fashion-mnist
  normgrad eval faithfulness --out docs              # the full study (docs/faithfulness.md and .json)
  normgrad eval faithfulness --out /tmp/f --quick    # a few minutes from a fresh clone: checks that everything runs
  normgrad eval faithfulness --out runs/ --images 500 --regime fashion-mnist
  normgrad eval faithfulness --out a --regime fashion-mnist & normgrad eval faithfulness --out b --regime photos; wait
  normgrad eval faithfulness --out docs --merge a/faithfulness-records.json b/faithfulness-records.json"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``faithfulness`` under ``normgrad eval``."""
    parser = subparsers.add_parser(
        "faithfulness",
        help="Which map is faithful to the model? ROAD and insertion/deletion for every method; writes faithfulness.md.",
        description="Scores every method of the registry, the explain default and pytorch-grad-cam's anchors with ROAD "
        "(noisy linear imputation) and RISE's insertion/deletion, on the Fashion-MNIST CNN of the training study (trained "
        "and cached) and on the packaged photos with the embedded model; writes faithfulness.md and faithfulness.json with "
        "computed verdicts.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for faithfulness.md and .json (default: docs)")
    parser.add_argument("--quick", action="store_true", help="a few minutes on 2 cores; too small for conclusions (= --preset quick)")
    parser.add_argument(
        "--preset",
        choices=["quick", "small", "full"],
        default="full",
        help="sizes: full (default), small (docs/faithfulness.md: about 80 min of computation on a busy 2-core machine), quick",
    )
    parser.add_argument("--cache", type=Path, default=None, help="folder for the trained CNN (default: $NORMGRAD_CACHE, ~/.cache/normgrad)")
    parser.add_argument("--data", type=Path, default=None, help="folder with the Fashion-MNIST IDX files (default: Debian's)")
    parser.add_argument("--images", type=int_at_least(3), default=None, help="Fashion-MNIST test images (default: 200; quick: 20)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="epochs of the CNN's training (default: the training study's 6)")
    parser.add_argument(
        "--train-images", type=int_at_least(100), default=None, help="train the CNN on the first N training images (default: all)"
    )
    parser.add_argument(
        "--regime", action="append", choices=["fashion-mnist", "photos", "shortcut"], default=None, help="run only this regime (repeatable)"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="write the report from these faithfulness-records.json files (runs of separate --regime) instead of running",
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default: 1, the fastest on a shared CPU)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from normgrad.evaluation.faithfulness.study import PRESETS, read_records, run_faithfulness, write_report

    config = PRESETS["quick" if args.quick else args.preset]()
    if args.images is not None:
        config = replace(config, fashion_images=args.images)
    if args.epochs is not None or args.train_images is not None:
        from normgrad.evaluation.training.cnn import TrainConfig

        model = config.model or TrainConfig()
        model = replace(model, epochs=args.epochs or model.epochs, train_images=args.train_images or model.train_images)
        config = replace(config, model=model)
    if args.regime:
        config = replace(config, regimes=tuple(dict.fromkeys(args.regime)))
    torch.set_num_threads(args.threads)
    preset = "quick" if args.quick else args.preset
    regenerate = "normgrad eval faithfulness" + ("" if preset == "full" else f" --preset {preset}") + " --out docs"
    if args.merge:
        document = write_report(config, args.out, [read_records(path) for path in args.merge], regenerate=regenerate)
    else:
        command = " ".join(["normgrad", *sys.argv[1:]]) if sys.argv[1:2] == ["eval"] else "normgrad eval faithfulness"
        document = run_faithfulness(
            config,
            args.out,
            data=args.data,
            cache=args.cache,
            log=lambda message: print(message, file=sys.stderr),
            command=command,
            regenerate=regenerate,
        )
    for claim in document.get("shortcut", {}).get("claims", []):
        print(f"- {claim['claim']} [shortcut]: {claim['verdict']}")
    for claim in document["claims"]:
        d = claim["metrics"].get("road_combined", {}).get("difference")
        if d:
            interval = f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            print(f"- {claim['claim']} [{claim['regime']}]: {claim['verdict']} (ROAD combined {interval})")
    print(f"wrote {args.out / 'faithfulness.md'}")
    return 0
