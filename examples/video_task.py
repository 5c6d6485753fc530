"""The synthetic video task (normgrad.evaluation.video_task): train a tiny 3-D CNN, then score where its maps peak.

    python examples/video_task.py            # 150 training steps, 200 test clips (a few minutes on a laptop CPU)
    python examples/video_task.py --quick    # 40 steps, 40 test clips (under a minute)

Prints a markdown table (hit rate, frame hit rate and mass on the square, with 95 % intervals) for NormGrad,
selective NormGrad, Grad-CAM and a random map, and writes a figure of one test clip (``--figure``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import normgrad as ng
from normgrad import baselines
from normgrad.evaluation import video_task as task
from normgrad.video.read import Clip
from normgrad.video.write import overlays, strip


def methods(model: torch.nn.Module) -> dict:
    """Each method's maps of a batch of clips for class 1 (NormGrad's two layers combined by product, as the paper's figures)."""
    size = (task.FRAMES, task.SIZE, task.SIZE)
    return {
        "NormGrad (layers 1 × 3)": lambda x: ng.combine(ng.normgrad(model, x, 1, layers=["1", "3"]), size=size),
        "NormGrad selective (layer 5)": lambda x: ng.normgrad_selective(model, x, 1, layers=["5"])["5"],
        "Grad-CAM (layer 5, Captum)": lambda x: baselines.gradcam(model, x, 1, layers=["5"])["5"],
        "Grad-CAM (layer 3, Captum)": lambda x: baselines.gradcam(model, x, 1, layers=["3"])["3"],
        "random": lambda x: baselines.random(model, x, 1)["input"],
    }


def figure(model: torch.nn.Module, data: task.Clips, path: Path) -> None:
    """One class-1 test clip: its frames, then NormGrad's and Grad-CAM's maps over them (one colour scale per clip)."""
    from PIL import Image

    index = int(torch.nonzero(data.labels == 1)[0])
    x = data.clips[index : index + 1]
    grey = (x[0, 0].clamp(-1, 2) + 1) / 3  # (T, H, W) in [0, 1]
    frames = (grey[..., None].expand(-1, -1, -1, 3).numpy() * 255).astype(np.uint8)
    clip = Clip(frames, "video", name="square")
    rows = [strip(frames, task.FRAMES)]
    size = (task.FRAMES, task.SIZE, task.SIZE)
    for name in ("NormGrad (layers 1 × 3)", "Grad-CAM (layer 5, Captum)"):
        saliency = ng.combine({"map": methods(model)[name](x)}, size=size)[0, 0].numpy()
        rows.append(strip(overlays(clip, saliency), task.FRAMES))
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    picture = np.concatenate([rows[0], gap, rows[1], gap, rows[2]])
    Image.fromarray(picture).resize((picture.shape[1] * 3, picture.shape[0] * 3), Image.Resampling.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 training steps and 40 test clips")
    parser.add_argument("--figure", type=Path, default=None, help="write a PNG of one test clip with its maps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps, count = (40, 40) if args.quick else (150, 200)
    torch.manual_seed(args.seed)
    model = task.tiny_cnn()
    try:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="training")
        task.train(model, steps, seed=args.seed, progress=lambda step: bar.update(1))
        bar.close()
    except ImportError:
        task.train(model, steps, seed=args.seed, progress=lambda step: print(f"step {step + 1}/{steps}", end="\r"))
    test = task.make_clips(count, seed=args.seed + 1)
    print(f"test accuracy: {task.accuracy(model, test):.3f} on {count} clips")
    positive = test.labels == 1
    x, masks = test.clips[positive], test.masks[positive]
    print(f"\n{int(positive.sum())} clips of class 1 (the square present in {task.SQUARE_FRAMES} of {task.FRAMES} frames)\n")
    print("| method | hit (95% CI) | frame hit (95% CI) | mass on the square (95% CI) |")
    print("|---|---|---|---|")
    for name, method in methods(model).items():
        summary = task.score(method(x), masks).summary()
        cells = [f"{value:.2f} [{low:.2f}, {high:.2f}]" for value, low, high in summary.values()]
        print(f"| {name} | {' | '.join(cells)} |")
    if args.figure is not None:
        figure(model, test, args.figure)
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
