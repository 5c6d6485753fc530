"""``normgrad compare``: one figure, rows = layers and their combination, columns = methods."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import torch

from normgrad import pipeline
from normgrad.cli.common import (
    add_meta_options,
    add_model_options,
    check_device,
    check_weights,
    command,
    load_model,
    methods_from,
    parse_layers,
)
from normgrad.errors import NormGradError
from normgrad.store import atomic_write

EXAMPLES = """examples:
  normgrad compare cat.jpg                                  # NormGrad, selective, meta, adversarial, Grad-CAM, gradient
  normgrad compare cat.jpg --methods normgrad,gradcam --layers blocks.2,bn2 --out cat_compare.png"""
DEFAULT_METHODS = "normgrad,selective,meta,adversarial,gradcam,gradient"


def add_parser(subparsers: Any) -> None:
    parser = command(subparsers, "compare", "One figure: rows = layers and their combination, columns = methods.", EXAMPLES)
    parser.add_argument("image", type=Path)
    add_model_options(parser)
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated methods (default: %(default)s)")
    parser.add_argument("--layers", default=None, help="comma-separated layer names, or 'auto' (default)")
    parser.add_argument("--target", default=None, help="'auto' (default), a class index or a class name")
    parser.add_argument("--out", type=Path, default=None, help="output PNG (default: <stem>_compare.png)")
    add_meta_options(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing figure")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import normgrad as ng

    out = args.out or Path(f"{args.image.stem}_compare.png")
    if out.is_dir():
        raise NormGradError(f"--out {out} is a folder; give a PNG file name")
    if out.exists() and not args.overwrite:
        raise NormGradError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    methods = methods_from([name.strip() for name in args.methods.split(",") if name.strip()], args)
    check_device(args.device)
    check_weights(args.weights)
    layer_names = parse_layers(args.layers)
    target = pipeline.parse_target(args.target)
    photo = ng.images.load_image(args.image)
    loaded = load_model(args)
    save_figure(compare_figure(loaded, photo, methods, layer_names, target, args.device), out, replace=args.overwrite)
    print(f"wrote {out}")
    return 0


def save_figure(figure: Any, out: Path, *, replace: bool) -> None:
    """A matplotlib figure as a PNG, written atomically (see :func:`normgrad.store.atomic_write`), then closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write(out, buffer.getvalue(), replace=replace)


def compare_figure(loaded: Any, photo: Any, methods: list, layer_names: list[str] | None, target: Any, device: str = "cpu") -> Any:
    """The paper-style figure (a matplotlib figure): rows = layers + combined (product), columns = methods."""
    import normgrad as ng

    x = pipeline.prepare(photo, loaded.preprocess)[None].to(device)
    layers = pipeline.resolve_layers(loaded, layer_names, x)
    prediction = pipeline.predict(loaded.model, x)
    targets = pipeline.targets(pipeline.resolve_target(target, loaded.class_names), prediction)
    width, height = photo.size
    panels: dict[str, dict[str, torch.Tensor]] = {layer: {} for layer in layers}
    panels[pipeline.COMBINED] = {}
    for method in methods:
        maps = pipeline.method_maps(method, loaded, x, targets.to(device), layers, (height, width), "product", per_layer=method.uses_layers)
        for name, saliency_map in maps.items():
            panels[name][method.title] = saliency_map
    index = int(targets[0])
    title = f"{loaded.name}: {loaded.class_name(index)} ({float(prediction.probabilities[0, index]):.1%})"
    return ng.viz.grid(photo, panels, title=title)
