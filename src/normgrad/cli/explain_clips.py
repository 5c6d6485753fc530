"""``normgrad explain`` on videos (.mp4, .avi, .mov, .mkv, .webm, ...) and volumes (.npy, .nii, .nii.gz).

A thin layer over :func:`normgrad.video.run.explain_files`: per clip a folder
of per-frame overlays, a strip (PNG montage), an animation (GIF), the map and
a summary; ``index.html`` shows every clip.  The model defaults to
``torchvision:r3d_18`` when ``--model`` is left at the image default.
"""

from __future__ import annotations

import argparse

from normgrad.video import is_clip_path
from normgrad.video.run import ClipOptions, explain_files

IMAGE_DEFAULT_MODEL = "efficientnet_lite0"


def all_clips(inputs: list[str]) -> bool:
    """True when every input is a video or volume file (then ``explain`` takes this path)."""
    return bool(inputs) and all(is_clip_path(path) for path in inputs)


def run(args: argparse.Namespace) -> int:
    options = ClipOptions(
        model="torchvision:r3d_18" if args.model == IMAGE_DEFAULT_MODEL else args.model,
        weights=args.weights,
        method=args.method or "normgrad",
        layers=None if args.layers in (None, "auto") else tuple(name.strip() for name in args.layers.split(",") if name.strip()),
        target=args.target,
        frames=args.frames,
        combine="product" if args.combine == "none" else args.combine,
        lr=args.lr,
        device=args.device,
    )
    done = explain_files(args.images, args.out, options, progress=lambda name: print(f"explained {name}", flush=True))
    for folder, result in done:
        best = result.predictions[0] if result.predictions else (result.target_name, 0.0)
        print(f"{folder}: {best[0]} ({best[1]:.1%}); explained {result.target_name}; {args.out / folder / 'strip.png'}")
    print(f"gallery: {args.out / 'index.html'} (open it in a browser)")
    return 0
