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


def background_threads(device: str) -> int:
    """Default ``--workers`` and ``--writers``: 2 when the model runs on the CPU (it needs the cores; measured on 2 cores),
    three quarters of the cores on an accelerator, where reading and writing are the bottleneck (measured on 16 cores:
    12 writers 2.2x faster than 4; docs/benchmarks.md), shared by the processes torchrun starts on this machine."""
    if not device.startswith("cuda"):
        return 2
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(2, 3 * (os.cpu_count() or 2) // (4 * processes))


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
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=None,
        help="background processes reading images (default: 2 on the CPU, 3/4 of the cores with --device cuda; 0: none)",
    )
    parser.add_argument(
        "--save-layers", action="store_true", help="also write each layer's map (<name>_<layer>.png/.npy) besides the combined one"
    )
    parser.add_argument("--no-gallery", action="store_true", help="do not write the gallery (OUT/index.html and OUT/gallery/)")
    parser.add_argument(
        "--writers",
        type=non_negative_int,
        default=None,
        help="background threads rendering, encoding and writing outputs (default: as --workers; 0: none)",
    )
    parser.add_argument("--no-overlay", action="store_true", help="do not write the .png overlays")
    parser.add_argument("--no-npy", action="store_true", help="do not write the .npy maps")
    parser.add_argument(
        "--map-dtype",
        choices=["float32", "float16"],
        default="float32",
        help="number type of the .npy maps (default: float32); float16 halves them, for combined maps in [0, 1] only",
    )
    parser.add_argument(
        "--storage",
        choices=["files", "shards"],
        default="files",
        help="where the maps go: a .npy file per map (default), or shards: each process's maps in one file OUT/shards/*.bin "
        "(for datasets; read them with normgrad.open_run)",
    )
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
        args.workers = background_threads(args.device) if args.workers is None else args.workers
        args.writers = background_threads(args.device) if args.writers is None else args.writers
        check_weights(args.weights)
        layer_names = parse_layers(args.layers)
        target_option = pipeline.parse_target(args.target)
        _check_save_layers(args, method)
        check_output_options(args)
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
            store = OutputStore(args.out, setup.plan.run, shard.rank, storage=args.storage)
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
    _print_table([e for e in entries if e.get("status") == "ok"], args.out, len(plan.done), args)
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
        **output_settings(args),
    }
    per_layer = _per_layer(args, method, layers)
    suffixes = output_suffixes(args)

    def files_of(name: str) -> list[str]:
        stems = [f"{name}_{layer}" for layer in layers] if per_layer else [name]
        stems += [f"{name}_{layer}" for layer in layers] if args.save_layers else []
        return [f"{stem}{suffix}" for stem in stems for suffix in suffixes]

    store = OutputStore(args.out, new_run_id(), storage=args.storage)
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
    return loaded.input_policy()


def check_output_options(args: argparse.Namespace) -> None:
    """Something must be written; float16 maps only where the map is a combination in [0, 1] (raw maps could overflow)."""
    if args.no_overlay and args.no_npy:
        raise NormGradError("--no-overlay with --no-npy leaves nothing to write; drop one of them")
    if args.no_npy and args.storage != "files":
        raise NormGradError("--storage shards keeps the maps in shards, but --no-npy writes none; drop one of them")
    if args.no_npy and args.map_dtype != "float32":
        raise NormGradError("--map-dtype sets the .npy maps' type, but --no-npy writes none; drop one of them")
    if args.map_dtype == "float16" and args.save_layers:
        raise NormGradError(
            "--map-dtype float16 is for combined maps, which lie in [0, 1]; the layer maps of --save-layers are raw "
            "(they can exceed float16's range or precision): use float32 or drop --save-layers"
        )
    if args.map_dtype == "float16" and args.combine == "none":
        raise NormGradError(
            "--map-dtype float16 is for combined maps, which lie in [0, 1] (--combine product, geometric or sum); "
            "raw maps (--combine none) can exceed float16's range or precision: use float32"
        )


def output_settings(args: argparse.Namespace) -> dict:
    """The output options that differ from the defaults (absent when default: records of earlier runs still match)."""
    return {
        **({"overlay": False} if args.no_overlay else {}),
        **({"npy": False} if args.no_npy else {}),
        **({"map_dtype": args.map_dtype} if args.map_dtype != "float32" else {}),
    }


def output_suffixes(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(suffix for suffix, off in ((".png", args.no_overlay), (".npy", args.no_npy)) if not off)


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
    """Explain this rank's images, writing each one's files and record as soon as its batch is done.

    The main thread runs the model and brings the maps to each photo's size;
    ``--writers`` background threads render, encode and write them and add them
    to the gallery (:class:`~normgrad.streaming.Writer`), while ``--workers``
    processes read the next images.
    """
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

    def finished(futures: list) -> None:
        for future in futures:
            item, error = future.result()  # a StoreError stops the run
            if error is None:
                progress.update(1)
            else:
                fail(item, error)

    writer = streaming.Writer(args.writers, limit=2 * args.batch_size)
    try:
        entries = [(w.index, Path(w.path), w.name) for w in mine]
        items = streaming.loader(entries, setup.preprocess, args.workers)
        for batch in streaming.batches(items, args.batch_size, lambda item: fail(item, item.error)):
            x = streaming.to_device([item.tensor for item in batch], args.device)
            usable, prediction, targets, maps = pipeline.explain_batch(method, loaded.model, x, setup.target, setup.layers)
            for i in sorted(set(range(len(batch))) - set(usable)):
                fail(batch[i], "the model's output is NaN or infinite for this image")
            batch = [batch[i] for i in usable]
            for i, (item, planes) in enumerate(zip(batch, _at_image_size(args, method, setup, batch, maps))):
                if isinstance(planes, str):
                    fail(item, planes)
                    continue
                constant = [name for name, plane in planes.items() if plane.min() == plane.max()]
                if constant:  # written as computed, but it points nowhere: say so
                    value = float(planes[constant[0]].flat[0])
                    say(f"normgrad: warning: {item.path}: the {', '.join(constant)} map is constant ({value:g} everywhere): "
                        "no location moves the objective there (in a product, one layer's map is zero)")  # fmt: skip
                task = (args, loaded, setup, work[item.index], item, planes, prediction, i, int(targets[i]), shard.rank, store, gallery)
                finished(writer.submit(_write, *task))
            if gallery is not None:
                gallery.flush()  # the page shows what is written: the open chunk and the index, whatever the total
        finished(writer.drain())
        if gallery is not None:
            gallery.flush()
    finally:
        writer.close()
        progress.close()
        store.journal.close()


def _at_image_size(args: argparse.Namespace, method: Any, setup: Setup, batch: list, maps: dict | None) -> list[dict | str]:
    """Per image: ``{output: (H, W) float32 array}`` at the photo's size — the combined map first, then each layer's
    with ``--save-layers``; one output per layer with ``--combine none`` — or why it is refused (a NaN map).
    Images of the same size are upsampled and combined together."""
    per_layer = _per_layer(args, method, setup.layers)
    mode = args.combine if args.combine != "none" else ("none" if per_layer else "raw")
    sizes = [(item.photo.size[1], item.photo.size[0]) for item in batch]
    results: list[dict | str] = [""] * len(batch)
    for size in dict.fromkeys(sizes):
        group = [i for i, s in enumerate(sizes) if s == size]
        if maps is not None:
            own = {name: m[group] for name, m in maps.items()}
        else:  # a model-free method, defined on the original image (each image's map is that of an image alone)
            own = {name: m.expand(len(group), -1, -1, -1) for name, m in pipeline.model_free_maps(method, 1, size).items()}
        at_size = pipeline.to_image_size(own, size, mode, layers=per_layer or args.save_layers)
        outputs = list(at_size) if per_layer else [pipeline.COMBINED, *(name for name in at_size if name != pipeline.COMBINED)]
        for k, i in enumerate(group):
            try:
                pipeline.check_finite({name: at_size[name][k] for name in outputs})
            except NormGradError as error:
                results[i] = str(error)
                continue
            results[i] = {name: at_size[name][k, 0].numpy() for name in outputs}
    return results


def _write(args: argparse.Namespace, loaded: Any, setup: Setup, work: Any, item: Any, planes: dict, prediction: Any, i: int,
           target: int, rank: int, store: OutputStore, gallery: Gallery | None) -> tuple[Any, str | None]:  # fmt: skip
    """A writer thread: one image's files and record, committed by the store, then its gallery pictures;
    ``(item, None)`` or ``(item, why it was skipped)``."""
    try:
        files, record = _outputs(args, loaded, setup, work, item, planes, prediction, i, target, rank)
        store.save(work, files, record)
    except StoreError:
        raise
    except ValueError as error:  # a NormGradError (file in the way) or a value strict JSON refuses
        return item, str(error)
    if gallery is not None:
        gallery.add(record, item.photo, planes)
    return item, None


def _outputs(args: argparse.Namespace, loaded: Any, setup: Setup, work: Any, item: Any, planes: dict, prediction: Any, i: int,
             target: int, rank: int) -> tuple[dict[str, bytes], dict]:  # fmt: skip
    """One image's files (``.png`` overlay and ``.npy`` map per output, at the photo's size) and its record."""
    from normgrad.viz import overlay

    width, height = item.photo.size
    files, listed = {}, []
    for layer, plane in planes.items():
        stem = work.name if layer == pipeline.COMBINED else f"{work.name}_{layer}"
        entry: dict[str, Any] = {"layer": layer}
        if not args.no_overlay:
            files[f"{stem}.png"] = encode_png(overlay(item.photo, plane))
            entry |= {"png": f"{stem}.png", "png_bytes": len(files[f"{stem}.png"])}
        if not args.no_npy:
            files[f"{stem}.npy"] = encode_npy(plane if plane.dtype == args.map_dtype else plane.astype(args.map_dtype))
            entry |= {"npy": f"{stem}.npy", "npy_bytes": len(files[f"{stem}.npy"])}
        listed.append(entry)
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


def _print_table(records: list[dict], out: Path, already: int, args: argparse.Namespace) -> None:
    width = max([len(Path(r["image"]).name) for r in records] + [5])
    print(f"{'image':{width}s}  {'prediction':28s} {'p':>6s}  {'explained':24s}  output")
    for r in records:
        best = r["predictions"][0] if r["predictions"] else r["target"]
        print(
            f"{Path(r['image']).name:{width}s}  {best['name'][:28]:28s} {best['probability']:6.1%}  "
            f"{r['target']['name'][:24]:24s}  {out / next(r['outputs'][0][k] for k in ('png', 'npy', 'shard') if k in r['outputs'][0])}"
        )
    earlier = f", {already} of them done earlier" if already else ""
    maps = f"{args.map_dtype} maps in shards/" if args.storage == "shards" else f"{args.map_dtype} .npy maps"
    written = [*([] if args.no_overlay else ["PNG overlays"]), *([] if args.no_npy else [maps]), "summary.json"]
    print(f"explained {len(records)} image(s) into {out}/{earlier} ({', '.join(written)})")


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
