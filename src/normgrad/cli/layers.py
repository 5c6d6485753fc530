"""``normgrad layers``: a model's layers with their types and output shapes; ``*`` marks the default layers."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from normgrad.cli.common import check_weights, command, positive_int, weights_option

EXAMPLES = """examples:
  normgrad layers efficientnet_lite0
  normgrad layers torchvision:resnet50 --size 224"""


def add_parser(subparsers: Any) -> None:
    parser = command(subparsers, "layers", "List a model's layers: name, type, output shape; * marks the default layers.", EXAMPLES)
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
    size = args.size or loaded.preprocess.size
    example = torch.zeros(1, 3, size, size)
    defaults = set(loaded.default_layers(example))
    infos = ng.engine.layers.describe_layers(loaded.model, example)
    width = max(len(info.name) for info in infos)
    print(f"  {'name':{width}s}  {'type':24s}  output shape          calls")
    for info in infos:
        mark = "*" if info.name in defaults else " "
        shape = "x".join(map(str, info.output_shape)) if info.output_shape else "-"
        print(f"{mark} {info.name:{width}s}  {info.type:24s}  {shape:20s}  {info.calls}")
    in_order = [info.name for info in infos if info.name in defaults]
    print(f"{len(infos)} layers of {loaded.name} at {size}x{size}; * = default layers ({', '.join(in_order)})")
    return 0
