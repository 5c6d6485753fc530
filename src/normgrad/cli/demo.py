"""``normgrad demo``: compare and explain two real photos with the embedded pretrained model, offline."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

from normgrad.cli.common import command

EXAMPLES = """examples:
  normgrad demo                  # writes normgrad-demo/ (rewriting the demo's own files there)"""


def add_parser(subparsers: Any) -> None:
    parser = command(subparsers, "demo", "Run compare and explain on a real photo with the embedded model, offline.", EXAMPLES)
    parser.add_argument("--out", type=Path, default=Path("normgrad-demo"), help="output folder (default: normgrad-demo)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import skimage.data

    import normgrad as ng
    from normgrad.cli import build_parser, explain
    from normgrad.cli.compare import DEFAULT_METHODS, compare_figure, save_figure
    from normgrad.store import atomic_write

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ng.NormGradError(f"--out {out} is a file; give a folder")
    paths = []
    for name, array in {"chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee()}.items():
        buffer = io.BytesIO()
        ng.images.from_array(array).save(buffer, format="JPEG", quality=95)
        atomic_write(out / f"{name}.jpg", buffer.getvalue(), replace=True)
        paths.append(out / f"{name}.jpg")
    print("normgrad demo: the embedded EfficientNet-Lite0 (ImageNet weights, offline) on two scikit-image photos")
    loaded = ng.models.load()
    methods = [ng.registry.get_method(name) for name in DEFAULT_METHODS.split(",")]
    figure_path = out / "chelsea_compare.png"
    save_figure(compare_figure(loaded, ng.images.load_image(paths[0]), methods, None, None), figure_path, replace=True)
    print(f"wrote {figure_path} (rows: layers and their product; columns: methods)")
    explain_args = build_parser().parse_args(["explain", *map(str, paths), "--out", str(out / "explain"), "--overwrite", "--save-layers"])
    status = explain.run(explain_args)
    print(f"demo outputs are in {out.resolve()}/")
    return status
