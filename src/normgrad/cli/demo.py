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
    result = ng.explain(paths, out / "explain", model=loaded, overwrite=True, save_layers=True)
    for record in result.records:
        best, (width, height) = record["predictions"][0], record["predicted_at"]
        print(f"{Path(record['image']).name}: {best['name']} {best['probability']:.1%} (predicted at the model's {width}x{height})")
    print(f"wrote {len(result.records)} explained photo(s) into {out / 'explain'}/ (gallery: {out / 'explain' / 'index.html'})")
    print(f"demo outputs are in {out.resolve()}/")
    return 0 if result.ok else 1
