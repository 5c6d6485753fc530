"""The synthetic segmentation task: does the map of a class's predicted region peak inside its object?

Trains the small FCN of :mod:`normgrad.evaluation.segmentation` on synthetic
images with known masks (CPU, a few minutes), explains each test object with
the region target of its class's predicted region, and prints hit rate and
mass (95 % bootstrap intervals over images) for NormGrad, Grad-CAM and random
maps.  ``--json`` writes the table, ``--figure`` a figure of a few test images.

    python examples/segmentation_task.py --json docs/segmentation_task.json --figure docs/segmentation_task.png
    python examples/segmentation_task.py --quick          # fewer steps and images: a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from normgrad.evaluation import segmentation as task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps (batches of 16 images)")
    parser.add_argument("--images", type=int, default=20, help="test images (two objects each)")
    parser.add_argument("--quick", action="store_true", help="40 steps, 6 images")
    parser.add_argument("--json", type=Path, default=None, help="write the table here")
    parser.add_argument("--figure", type=Path, default=None, help="write a figure of three test images here")
    args = parser.parse_args()
    steps, images = (40, 6) if args.quick else (args.steps, args.images)

    done = [0]

    def step(loss: float) -> None:
        done[0] += 1
        print(f"\rtraining {done[0]}/{steps}  loss {loss:.3f}", end="", file=sys.stderr, flush=True)

    model = task.train(steps, progress=step)
    accuracy = task.pixel_accuracy(model)
    print(f"\npixel accuracy on fresh images: {accuracy:.1%}", file=sys.stderr)
    seen = [0]

    def explained() -> None:
        seen[0] += 1
        print(f"\rexplaining {seen[0]}/{images}", end="", file=sys.stderr, flush=True)

    table = task.summarise(task.evaluate(model, images, progress=explained))
    print(file=sys.stderr)
    print(f"{'method':22s} {'hit rate':>22s} {'mass in the mask':>22s}  objects")
    for method, row in table.items():
        hit = f"{row['hit']:.2f} [{row['hit_low']:.2f}, {row['hit_high']:.2f}]"
        mass = f"{row['mass']:.2f} [{row['mass_low']:.2f}, {row['mass_high']:.2f}]"
        print(f"{method:22s} {hit:>22s} {mass:>22s}  {row['objects']:.0f}")
    if args.json is not None:
        result = {"steps": steps, "images": images, "pixel_accuracy": accuracy, "methods": table}
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.figure is not None:
        figure(model, args.figure)


def figure(model: torch.nn.Module, path: Path) -> None:
    """Three test images: the image, its predicted mask of one object's class, NormGrad (product) and Grad-CAM of that region."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, _, objects = task.synthetic_batch(3, np.random.default_rng(7))
    columns = ("image", "predicted mask", "normgrad (product)", "gradcam (stride 4)")
    fig, axes = plt.subplots(3, 4, figsize=(8, 6.4))
    for row in range(3):
        cls, mask = objects[row][0]
        maps = task.method_maps(model, x[row : row + 1], cls, seed=row)
        with torch.no_grad():
            predicted = model(x[row : row + 1])["out"].argmax(1)[0].numpy() == cls
        image = (x[row].permute(1, 2, 0).numpy() * 0.25 + 0.5).clip(0, 1)
        panels = (image, predicted, maps["normgrad (product)"][0, 0].numpy(), maps["gradcam (stride 4)"][0, 0].numpy())
        for column, (panel, title) in enumerate(zip(panels, columns)):
            axis = axes[row, column]
            axis.imshow(panel, cmap=None if column == 0 else "gray" if column == 1 else "jet")
            axis.contour(mask, levels=[0.5], colors="white", linewidths=0.8)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=9)
        axes[row, 0].set_ylabel(task.CLASSES[cls], fontsize=9)
    fig.suptitle("region target: the class's predicted region (white: the object's true mask)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
