"""``normgrad layers``: a model's layers, types, output shapes, layouts; ``*`` marks the default layers, ``e`` explain's."""

from __future__ import annotations

import argparse
from typing import Any

from normgrad.cli.common import check_weights, command, positive_int, weights_option
from normgrad.defaults import defaults_for
from normgrad.errors import NormGradError
from normgrad.video.explain import example_input

EXAMPLES = """examples:
  normgrad layers efficientnet_lite0
  normgrad layers torchvision:resnet50 --size 224"""


def add_parser(subparsers: Any) -> None:
    help_text = "List a model's layers: name, type, output shape, layout; * marks the default layers, e the explain default's."
    parser = command(subparsers, "layers", help_text, EXAMPLES)
    parser.add_argument("model", nargs="?", default="efficientnet_lite0", help="model name (default: efficientnet_lite0)")
    parser.add_argument("--weights", default="default", help="a local state dict, 'none' for random weights")
    parser.add_argument("--size", type=positive_int, default=None, help="input side in pixels (default: the model's)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import normgrad as ng
    from normgrad.images import check_input_size

    check_weights(args.weights)
    if args.size is not None:
        check_input_size(args.size, args.size)
    loaded = ng.models.load(args.model, weights=weights_option(args.weights))
    fixed = loaded.preprocess.fixed_size
    if args.size is not None and fixed is not None:
        raise NormGradError(f"--size does not apply to {loaded.name}: its input size is fixed, {fixed[0]}x{fixed[1]}; drop --size")
    height, width = (args.size, args.size) if args.size else loaded.preprocess.example_size
    example = example_input(loaded.model, height, width)  # videos and volumes: (1, 3, 16, H, W)
    defaults = set(loaded.default_layers(example))
    explain = defaults_for(loaded) if args.size is None and example.dim() == 4 else None  # clips: explain uses the stage outputs
    infos = ng.engine.describe.describe_layers(loaded.model, example)
    name_width = max(len(info.name) for info in infos)
    print(f"   {'name':{name_width}s}  {'type':24s}  {'output shape':20s}  {'layout (or why no map)':30s}  calls")
    for info in infos:
        mark = ("*" if info.name in defaults else " ") + ("e" if explain is not None and info.name in explain.methods else " ")
        shape = "x".join(map(str, info.output_shape)) if info.output_shape else "-"
        print(f"{mark} {info.name:{name_width}s}  {info.type:24s}  {shape:20s}  {info.layout_text[:30]:30s}  {info.calls}")
    in_order = [info.name for info in infos if info.name in defaults]
    clip = f"{example.shape[2]} frames of " if example.dim() == 5 else ""
    print(f"{len(infos)} layers of {loaded.name} at {clip}{height}x{width}; * = default layers ({', '.join(in_order)})")
    if explain is not None:
        print(f"e = the layers of `normgrad explain`'s default: {explain.describe()}")
    return 0
