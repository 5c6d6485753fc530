"""The training study's per-image measure at k = 10 %, lr 0.0025, for each fill (mean, blur, ROAD): a partial rerun.

The full study (``normgrad eval training --out docs``) now runs the ROAD fill
beside mean and blur everywhere; this reruns only its primary setting, on a
model and image count that fit a shared machine, and prints the paired
differences of the claims with their verdicts per fill (markdown; ``--json``
for the raw summary).

    python tools/training_fills.py --images 300 --epochs 2 --train-images 20000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from normgrad.evaluation.training import stats
from normgrad.evaluation.training.cnn import TrainConfig, load_or_train
from normgrad.evaluation.training.fashion_mnist import load_split
from normgrad.evaluation.training.per_image import PAPER_LR, run_per_image
from normgrad.evaluation.training.study import StudyConfig, fashion_regime
from normgrad.evaluation.training.summary import per_image_summary

CLAIMS = (("meta", "normgrad", 1), ("meta:selective", "selective", 1), ("meta", "random", 1), ("adversarial", "random", -1),
          ("adversarial", "meta", -1))  # fmt: skip
METHODS = ("normgrad", "selective", "meta", "meta:selective", "adversarial", "random")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model_config = TrainConfig(epochs=args.epochs, train_images=args.train_images)
    trained = load_or_train(load_split("train"), load_split("test"), model_config, 0)
    config = StudyConfig(images=args.images, methods=METHODS, fractions=(0.1,), lrs=(PAPER_LR,), model=model_config)
    regime = fashion_regime(trained, load_split("test"), config)
    result = run_per_image(regime, METHODS, fractions=(0.1,), lrs=(PAPER_LR,), fills=("mean", "blur", "road"))
    summary = per_image_summary(result, resamples=args.resamples)
    print(f"model: {args.epochs} epoch(s), {args.train_images or 60000} images, test accuracy {trained.test_accuracy:.4f}; "
          f"{args.images} test images; k = 10 %, lr {PAPER_LR}, measured loss change of the unmasked image\n")  # fmt: skip
    print("| claim | fill | difference of shares [95 % CI] | Wilcoxon p | verdict |\n|---|---|---|---:|---|")
    for a, b, direction in CLAIMS:
        for fill in ("mean", "blur", "road"):
            wanted = ((a, b, fill, "self", "measured"), (b, a, fill, "self", "measured"))
            row = next(c for c in summary["comparisons"] if (c["a"], c["b"], c["fill"], c["measure"], c["kind"]) in wanted)
            sign = 1 if (row["a"], row["b"]) == (a, b) else -1
            d = row["difference"]
            value, low, high = (sign * d["value"], *sorted((sign * d["low"], sign * d["high"])))
            verdict = stats.verdict(stats.Interval(value, low, high), direction, 0.02)
            claimed = ">" if direction > 0 else "<"
            print(f"| {a} − {b} {claimed} 0 | {fill} | {value:+.3f} [{low:+.3f}, {high:+.3f}] | {row['wilcoxon_p']:.3g} | {verdict} |")
    print("\n| method | " + " | ".join(f"share, {fill}" for fill in ("mean", "blur", "road")) + " |\n|---|---:|---:|---:|")
    for method in METHODS:
        cells = []
        for fill in ("mean", "blur", "road"):
            s = next(
                r for r in summary["shares"] if (r["method"], r["fill"], r["measure"], r["kind"]) == (method, fill, "self", "measured")
            )
            cells.append(f"{s['value']:.3f} [{s['low']:.3f}, {s['high']:.3f}]")
        print(f"| {method} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=float))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
