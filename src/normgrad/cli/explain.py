"""``normgrad explain``: saliency maps for images, folders and globs; resumable; sharded under ``torchrun``.

Per image ``<name>.png`` (the map over the photo, at its pixel size) and
``<name>.npy`` (the float32 map, original height × width); ``summary.json``
is the folder's manifest (:mod:`normgrad.store`); ``index.html`` is its
gallery (:mod:`normgrad.gallery`), updated after each batch.  Every option is checked
before the model loads, layers and class names right after, and all of it
before anything is written.  Images that cannot be explained are skipped
with one line each (exit status 1); errors that stop the run are one line
(exit status 2).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from normgrad import pipeline, streaming
from normgrad.cli.common import (
    DEFAULT_LR,
    DEFAULT_STEPS,
    add_meta_options,
    add_model_options,
    check_device,
    check_weights,
    command,
    counter,
    load_model,
    methods_from,
    non_negative_int,
    parse_layers,
    positive_int,
    say,
    weights_identity,
)
from normgrad.cli.common import progress as progress_bar
from normgrad.combine import COMBINE_MODES
from normgrad.defaults import FINE_METHOD as FALLBACK_METHOD
from normgrad.defaults import layered
from normgrad.errors import NormGradError
from normgrad.gallery import Gallery
from normgrad.store import OutputStore, StoreError, encode_npy, encode_png, new_run_id
from normgrad.store import precheck as precheck_out

EXAMPLES = """examples:
  normgrad explain cat.jpg                                  # the default (normgrad.defaults), embedded model
  normgrad explain photos/ --method selective --out maps/ --batch-size 16 --workers 4
  normgrad explain "photos/**/*.jpg" --out maps/ --resume             # continue after an interruption
  torchrun --nproc-per-node 2 -m normgrad explain photos/ --out maps/   # shard across processes
  normgrad explain cat.jpg --method meta --lr 0.0025 --target "tiger cat"
  normgrad explain cat.jpg --method conv3x3+max --layers blocks.2,blocks.4 --combine none
  normgrad explain cat.jpg --model torchvision:resnet50 --weights resnet50.pth --method gradcam
  normgrad explain photos/ --out maps/ --save-layers       # each layer's map too; open maps/index.html

outputs mirror the inputs' paths below their folder (photos/a/cat.jpg -> maps/a/cat.png, .npy);
files normgrad did not write are never replaced without --overwrite; --resume skips images done with
the same settings and redoes changed inputs, failed images and missing or truncated outputs;
--resume --overwrite also redoes images made with other settings. Exit status: 0 all explained,
1 some images skipped (one line each), 2 error, 130 interrupted."""


MIN_SIZE = 16  # the smallest --size: below it most models have no spatial map left


class Quiet(Exception):
    """A failure another rank reports: exit with ``code`` without printing it again."""

    def __init__(self, code: int = 2) -> None:
        super().__init__(code)
        self.code = code


def add_parser(subparsers: Any) -> None:
    parser = command(subparsers, "explain", "Saliency maps for images: <name>.png overlays, <name>.npy maps and summary.json.", EXAMPLES)
    parser.add_argument(
        "images", nargs="+", help="image files (JPEG, PNG, WebP, TIFF, ...), folders (searched recursively) or quoted globs"
    )
    add_model_options(parser)
    parser.add_argument(
        "--method",
        default=None,
        help="normgrad, selective, EXTRACT+AGGREGATE, meta[:BASE], adversarial[:BASE], gradient, input_x_gradient, "
        "guided_backprop, integrated_gradients, gradcam, center, random (default: the model's default, normgrad.defaults: "
        "selective at the last stride-16 layer x gradient x activation at the two deepest block outputs)",
    )
    parser.add_argument(
        "--layers", default=None, help="comma-separated layer names, or 'auto' (the default's layers; with --method: the stage outputs)"
    )
    parser.add_argument(
        "--size",
        type=positive_int,
        default=None,
        help="shorter side of the model input in pixels (default: the photo's own, kept between the model's size and 2x it)",
    )
    parser.add_argument(
        "--combine", default="product", choices=[*COMBINE_MODES, "none"], help="how layer maps become one map (default: product)"
    )
    parser.add_argument("--target", default=None, help="'auto' (the predicted class, default), a class index, or a class name")
    parser.add_argument("--top-k", type=non_negative_int, default=5, help="predictions listed per image (default: 5)")
    parser.add_argument("--out", type=Path, default=Path("normgrad-out"), help="output folder (default: normgrad-out)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default: 8)")
    add_meta_options(parser)
    parser.add_argument("--workers", type=non_negative_int, default=2, help="background processes reading images (default: 2; 0: none)")
    parser.add_argument(
        "--save-layers", action="store_true", help="also write each layer's map (<name>_<layer>.png/.npy) besides the combined one"
    )
    parser.add_argument("--no-gallery", action="store_true", help="do not write the gallery (OUT/index.html and OUT/gallery/)")
    parser.add_argument("--resume", action="store_true", help="continue: skip images already explained in --out with the same settings")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start --out's record afresh, replacing files in the way (never an input); with --resume: redo only what was "
        "made with other settings or is in the way",
    )
    parser.set_defaults(run=run)


@dataclass
class Setup:
    """What rank 0 decided and every rank uses: layers, target, settings, the plan, the default's method per layer, preprocessing."""

    layers: list[str] | None
    target: int | None
    settings: dict
    plan: Any
    default_methods: dict[str, str] | None  # the default method (no --method): layer -> registry method
    preprocess: Any


def run(args: argparse.Namespace) -> int:
    rank0 = os.environ.get("RANK", "0") == "0"
    try:
        (method,) = methods_from([args.method], args) if args.method is not None else (None,)
        if args.method is None:
            check_default_options(args)
        if args.size is not None and args.size < MIN_SIZE:
            raise NormGradError(f"--size must be at least {MIN_SIZE} pixels; got {args.size}")
        check_device(args.device)
        check_weights(args.weights)
        layer_names = parse_layers(args.layers)
        target_option = pipeline.parse_target(args.target)
        _check_save_layers(args, method)
        precheck_out(args.out)
    except NormGradError:
        if not rank0:
            raise Quiet(2) from None  # rank 0 says it
        raise
    shard = streaming.join_shard(args.device)
    if shard.distributed and args.device.startswith("cuda"):
        args.device = f"cuda:{shard.local_rank}"
    try:
        return _explain(args, method, layer_names, target_option, shard)
    finally:
        streaming.leave_shard(shard)


def _explain(args: argparse.Namespace, method: Any, layer_names: list[str] | None, target_option: Any, shard: streaming.Shard) -> int:
    store = gallery = None
    try:
        if shard.rank == 0:
            try:
                inputs = streaming.expand_inputs(args.images, exclude=args.out)
                if not inputs:
                    raise NormGradError(
                        "no image given (folders are searched for .jpg, .png, .webp, .tif, .bmp, .gif files; hidden ones are skipped)"
                    )
                loaded = load_model(args)
                setup, store = _plan(args, method, loaded, layer_names, target_option, inputs, shard.world)
                gallery = _start_gallery(store, setup.plan)
            except BaseException:
                streaming.share(shard, None)  # the other ranks stop quietly; this one reports
                raise
            streaming.share(shard, setup)
        else:
            setup = streaming.share(shard)
            if setup is None:
                raise Quiet(2)
            loaded = load_model(args)
            store = OutputStore(args.out, setup.plan.run, shard.rank)
            gallery = Gallery(store, live=False) if setup.plan.gallery else None
        if setup.default_methods is not None:
            method = layered(setup.default_methods)
        plan = setup.plan
        for path, reason in plan.skipped if shard.rank == 0 else []:
            say(f"normgrad: skipping {path}: {reason}")
        _explain_share(args, method, loaded, setup, store, plan.work[shard.rank :: shard.world], shard, gallery)
        streaming.finish_shard(shard)
        if shard.rank != 0:
            return 0
        manifest = store.finish(shard.world)
        if gallery is not None:
            gallery.finish(manifest.to_dict())
    finally:
        if gallery is not None:
            gallery.stop()
        if store is not None:
            store.close()
    entries = [manifest.entries.get(name, {"status": "missing"}) for name in [w.name for w in plan.work] + plan.done]
    bad = sum(e.get("status") != "ok" for e in entries) + len(plan.skipped)
    _print_table([e for e in entries if e.get("status") == "ok"], args.out, len(plan.done))
    if gallery is not None:
        print(f"gallery: {args.out / 'index.html'} (open it in a browser)")
    if bad and shard.distributed:
        say(f"normgrad: {bad} image(s) skipped (listed in {args.out / 'summary.json'} under 'failed'); exit status 0 under torchrun")
        return 0
    return 1 if bad else 0


def _plan(args: argparse.Namespace, method: Any, loaded: Any, layer_names: list[str] | None, target_option: Any,
          inputs: list[streaming.Input], world: int) -> tuple[Setup, OutputStore]:  # fmt: skip
    """Rank 0: resolve the method (the model's default without --method), layers and target, the input size;
    lock the folder, name every input and decide what to do."""
    defaults = loaded.explain_defaults() if method is None else None
    default_methods = dict(defaults.methods) if defaults is not None else None
    if defaults is not None:
        method = defaults.method
    if defaults is not None and layer_names is None:
        layers = list(defaults.layers)
    else:
        layers = pipeline.resolve_layers(loaded, layer_names) if method.uses_layers else None
    if default_methods is not None:
        default_methods = {layer: default_methods.get(layer, FALLBACK_METHOD) for layer in layers}
    target = pipeline.resolve_target(target_option, loaded.class_names) if method.needs_model else None
    preprocess = input_preprocess(loaded, args.size)
    settings = {
        "model": loaded.name,
        "weights": weights_identity(args.weights),
        "method": method.name,
        "default": ", ".join(f"{layer}: {name}" for layer, name in default_methods.items()) if default_methods else None,
        "input": {"size": preprocess.size, "max_size": preprocess.max_size, "fixed_size": preprocess.fixed_size},
        "layers": layers,
        "combine": args.combine,
        "target": "auto" if target is None else target,
        "lr": (DEFAULT_LR if args.lr is None else args.lr) if method.inner_step else None,
        "steps": (DEFAULT_STEPS if args.steps is None else args.steps) if method.inner_step else None,
        **({"save_layers": True} if args.save_layers else {}),  # absent unless given: records of earlier versions still match
    }
    per_layer = _per_layer(args, method, layers)

    def files_of(name: str) -> list[str]:
        stems = [f"{name}_{layer}" for layer in layers] if per_layer else [name]
        stems += [f"{name}_{layer}" for layer in layers] if args.save_layers else []
        return [f"{stem}{suffix}" for stem in stems for suffix in (".png", ".npy")]

    store = OutputStore(args.out, new_run_id())
    try:
        paths = [(str(i.path), str(i.root)) for i in inputs]
        plan = store.begin(settings, paths, files_of, resume=args.resume, overwrite=args.overwrite, world=world,
                           gallery=not args.no_gallery)  # fmt: skip
    except BaseException:
        store.close()
        raise
    return Setup(layers, target, settings, plan, default_methods, preprocess), store


def input_preprocess(loaded: Any, size: int | None) -> Any:
    """The preprocessing of this run: ``--size`` (the shorter side), else the model's input policy (:mod:`normgrad.defaults`)."""
    if size is not None:
        fixed = loaded.preprocess.fixed_size
        if fixed is not None:
            raise NormGradError(f"--size does not apply to {loaded.name}: its input size is fixed, {fixed[0]}x{fixed[1]}; drop --size")
        return replace(loaded.preprocess, size=size, max_size=None)
    return loaded.explain_defaults().preprocess


def check_default_options(args: argparse.Namespace) -> None:
    """Without --method (the default: selective and gradient x activation), options for other methods are errors."""
    given = [flag for flag, value in (("--lr", args.lr), ("--steps", args.steps)) if value is not None]
    if given:
        raise NormGradError(f"{' and '.join(given)} only apply to meta/adversarial methods; add --method meta (or meta:BASE)")


def _check_save_layers(args: argparse.Namespace, method: Any) -> None:
    """``--save-layers`` only where there are layer maps besides a combined one (an ignored option is an error).

    ``method`` is ``None`` for the default, which has layer maps."""
    if args.save_layers and method is not None and not method.uses_layers:
        raise NormGradError(f"--save-layers does not apply to {method.name}: it has no layer maps; drop --save-layers")
    if args.save_layers and args.combine == "none":
        raise NormGradError("--save-layers with --combine none: every layer's map is written already; drop --save-layers")


def _start_gallery(store: OutputStore, plan: Any) -> Gallery | None:
    """Rank 0: the gallery as the run starts (every earlier entry, missing pictures made again), or ``None`` (--no-gallery)."""
    if not plan.gallery:
        return None
    gallery = Gallery(store)
    gallery.start(store.read_manifest(), running=True, progress=lambda items: progress_bar(items, "gallery pictures", "img"))
    return gallery


def _per_layer(args: argparse.Namespace, method: Any, layers: list[str] | None) -> bool:
    return args.combine == "none" and method.uses_layers and layers is not None and len(layers) > 1


def _explain_share(args: argparse.Namespace, method: Any, loaded: Any, setup: Setup, store: OutputStore, mine: list, shard: Any,
                   gallery: Gallery | None) -> None:  # fmt: skip
    """Explain this rank's images, writing each one's files and record as soon as its batch is done."""
    run = setup.plan.run
    store.journal.append(
        {"type": "run", "run": run, "rank": shard.rank, "world": shard.world, "settings": setup.settings, "started": _now()}
    )
    work = {w.index: w for w in mine}
    progress = counter(len(mine), "explaining", "img", disable=shard.rank != 0)

    def fail(item: Any, error: str) -> None:
        say(f"normgrad: skipping {item.path}: {error}")
        record = {"type": "failed", "run": run, "rank": shard.rank, "index": item.index, "name": item.name,
                  "image": str(item.path), "input": item.identity, "error": error}  # fmt: skip
        store.journal.append(record)
        if gallery is not None:
            gallery.fail(record)
        progress.update(1)

    try:
        entries = [(w.index, Path(w.path), w.name) for w in mine]
        items = streaming.loader(entries, setup.preprocess, args.workers)
        for batch in streaming.batches(items, args.batch_size, lambda item: fail(item, item.error)):
            x = torch.stack([item.tensor for item in batch]).to(args.device)
            prediction = pipeline.predict(loaded.model, x)
            usable = [i for i in range(len(batch)) if prediction.finite(i)]
            for i in set(range(len(batch))) - set(usable):
                fail(batch[i], "the model's output is NaN or infinite for this image")
            if not usable:
                continue
            if len(usable) < len(batch):
                batch, x = [batch[i] for i in usable], x[usable]
                prediction = pipeline.Prediction(prediction.logits[usable], prediction.probabilities[usable])
            targets = pipeline.targets(setup.target, prediction)
            maps = pipeline.run_method(method, loaded.model, x, targets.to(args.device), setup.layers) if method.needs_model else None
            for i, item in enumerate(batch):
                try:
                    files, record = _outputs(
                        args, method, loaded, setup, work[item.index], item, maps, i, prediction, int(targets[i]), shard.rank
                    )
                    store.save(work[item.index], files, record)
                except StoreError:
                    raise
                except ValueError as error:  # a NormGradError (refused map, file in the way) or a value strict JSON refuses
                    fail(item, str(error))
                    continue
                if gallery is not None:
                    gallery.add(record, item.photo, files)
                progress.update(1)
            if gallery is not None:
                gallery.flush()  # the page shows the batch: the open chunk and the index, whatever the total
    finally:
        progress.close()
        store.journal.close()


def _outputs(args: argparse.Namespace, method: Any, loaded: Any, setup: Setup, work: Any, item: Any, maps: dict | None, i: int,
             prediction: Any, target: int, rank: int) -> tuple[dict[str, bytes], dict]:  # fmt: skip
    """One image's files (``.npy`` map and ``.png`` overlay per output, at the photo's size) and its record."""
    import normgrad as ng

    width, height = item.photo.size
    own = {name: m[i : i + 1] for name, m in maps.items()} if maps is not None else pipeline.model_free_maps(method, 1, (height, width))
    per_layer = _per_layer(args, method, setup.layers)
    mode = args.combine if args.combine != "none" else ("none" if per_layer else "raw")
    at_size = pipeline.to_image_size(own, (height, width), mode, layers=per_layer or args.save_layers)
    pipeline.check_finite(at_size)
    outputs = list(at_size.items()) if per_layer else [("combined", at_size.pop(pipeline.COMBINED)), *at_size.items()]
    files, listed = {}, []
    for layer, saliency_map in outputs:
        stem = f"{work.name}_{layer}" if per_layer or layer != "combined" else work.name
        plane = saliency_map[0, 0].numpy().astype("float32")
        files[f"{stem}.npy"] = encode_npy(plane)
        files[f"{stem}.png"] = encode_png(ng.viz.overlay(item.photo, plane))
        listed.append({"layer": layer, "png": f"{stem}.png", "npy": f"{stem}.npy",
                       "png_bytes": len(files[f"{stem}.png"]), "npy_bytes": len(files[f"{stem}.npy"])})  # fmt: skip
    record = {
        "type": "image",
        "run": setup.plan.run,
        "rank": rank,
        "index": item.index,
        "name": work.name,
        "image": str(item.path),
        "input": item.identity,
        "size": [width, height],
        "layers": setup.layers or ["input"],
        "outputs": listed,
        "predictions": prediction.top(i, args.top_k, loaded.class_name),
        "target": pipeline.entry(target, float(prediction.probabilities[i, target]), loaded.class_name),
    }
    return files, record


def _print_table(records: list[dict], out: Path, already: int) -> None:
    width = max([len(Path(r["image"]).name) for r in records] + [5])
    print(f"{'image':{width}s}  {'prediction':28s} {'p':>6s}  {'explained':24s}  output")
    for r in records:
        best = r["predictions"][0] if r["predictions"] else r["target"]
        print(
            f"{Path(r['image']).name:{width}s}  {best['name'][:28]:28s} {best['probability']:6.1%}  "
            f"{r['target']['name'][:24]:24s}  {out / r['outputs'][0]['png']}"
        )
    earlier = f", {already} of them done earlier" if already else ""
    print(f"explained {len(records)} image(s) into {out}/{earlier} (PNG overlays, float32 .npy maps, summary.json)")


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
