"""``normgrad.explain``: maps for a folder, a glob, a list of paths, a Dataset, a DataLoader or a tensor, in memory or
into an output folder (the whole output contract of ``normgrad explain``: store, lock, resume, journal, gallery, shards).

::

    inputs ──collect──▶ Inputs ──(rank 0) plan: model, method, layers, target, sizes; store.begin──▶ Setup
           ──read (reader processes)──▶ Items ──BatchLoop──▶ Explained ──▶ in memory, or
                                                                     ──writer threads──▶ files + journal + gallery
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from normgrad.errors import NormGradError, did_you_mean
from normgrad.run import shard as shards
from normgrad.run.batch_size import choose_batch_size
from normgrad.run.inputs import Inputs, collect
from normgrad.run.layout import run_layout
from normgrad.run.loop import BatchLoop
from normgrad.run.options import ExplainOptions, background_threads
from normgrad.run.plan import Setup, into_folder, load_model, model_device, resolve
from normgrad.run.records import Explained, outputs
from normgrad.run.report import counter, printable, progress, quiet, say
from normgrad.run.writers import Writer


@dataclass
class RunResult:
    """What a run did.  In memory (``out=None``): ``images``, one :class:`Explained` per image explained, in input
    order.  Into a folder: ``records``, the ``summary.json`` entries of the images explained (this run's and those
    done earlier), ``done_earlier`` of them by an earlier run.  Both: ``failed`` (``{"image", "error"}`` per image
    skipped, unreadable inputs included) and the ``settings``."""

    out: Path | None
    settings: dict
    images: list[Explained] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    done_earlier: int = 0
    distributed: bool = False
    rank: int = 0  # under torchrun, only rank 0's result lists the run
    gallery: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def __len__(self) -> int:
        return len(self.images) if self.out is None else len(self.records)

    def __iter__(self):
        return iter(self.images if self.out is None else self.records)

    def __getitem__(self, index: int) -> Any:
        return (self.images if self.out is None else self.records)[index]


def explain(
    inputs: Any,
    out: str | os.PathLike | None = None,
    *,
    model: Any = None,
    method: str | None = "default",
    layers: Any = None,
    target: Any = "auto",
    options: ExplainOptions | None = None,
    verbose: bool = True,
    **more: Any,
) -> RunResult:
    """Saliency maps for ``inputs`` with ``normgrad explain``'s defaults, in memory (``out=None``) or into ``out``.

    ``inputs``: a path, folder or glob, or a list of them (the CLI's semantics); a ``torch.utils.data.Dataset``
    or ``DataLoader`` of images or ``(image, target)`` pairs (PIL images, tensors or arrays: see
    :mod:`normgrad.run.inputs`); a list of images; an (N, C, H, W) tensor of pixels in [0, 1].
    ``model``: a name, a :class:`~normgrad.models.LoadedModel` or an ``nn.Module`` (default: the embedded
    EfficientNet-Lite0).  ``method="default"``: the model's default (:mod:`normgrad.defaults`).  ``target``:
    ``"auto"`` (the prediction at the model's own size), a class index or a name.  Any other
    :class:`ExplainOptions` field as a keyword (``batch_size=``, ``size=``, ``combine=``, ``resume=``, ...), or
    ``options=`` an :class:`ExplainOptions`.  ``verbose=False``: no lines on stderr.

    In memory, each image's maps are at its own pixel size: ``result.images[k].map`` (H, W).  Into a folder the
    files, ``summary.json`` and the gallery are those of ``normgrad explain --out``; ``resume=True`` skips
    what is done.  Bad options or inputs raise one :class:`NormGradError`, as the CLI says it.
    """
    base = options if options is not None else ExplainOptions()
    names = {f.name for f in fields(ExplainOptions)}
    unknown = [key for key in more if key not in names]
    if unknown:
        raise NormGradError(f"unknown option {unknown[0]!r}{did_you_mean(unknown[0], sorted(names))}")
    given: dict[str, Any] = dict(more)
    if model is not None:
        given["model"] = model
    if method != "default" or options is None:
        given["method"] = None if method in (None, "default") else method
    if layers is not None:
        given["layers"] = layers
    if target != "auto" or options is None:
        given["target"] = None if target in (None, "auto") else target
    return run(inputs, None if out is None else Path(out), replace(base, **given), say=say if verbose else quiet)


def run(inputs: Any, out: Path | None, options: ExplainOptions, *, say: Callable[[str], None] = say) -> RunResult:
    """The run of :func:`explain` and ``normgrad explain`` (``options`` checked here, before the model loads)."""
    from normgrad.store import precheck

    rank0 = os.environ.get("RANK", "0") == "0"
    try:
        checked = options.check()
        options = replace(options, workers=background_threads(options.device) if options.workers is None else options.workers,
                          writers=background_threads(options.device) if options.writers is None else options.writers)  # fmt: skip
        if out is not None:
            precheck(out)
    except NormGradError:
        if not rank0:
            raise shards.Quiet(2) from None  # rank 0 says it
        raise
    if out is None:
        return _in_memory(inputs, options, checked, say)
    shard = shards.join_shard(options.device)
    if shard.distributed and options.device.startswith("cuda"):
        options = replace(options, device=f"cuda:{shard.local_rank}")
    try:
        return _into_folder(inputs, out, options, checked, shard, say)
    finally:
        shards.leave_shard(shard)


def _in_memory(inputs: Any, options: ExplainOptions, checked: Any, say: Callable[[str], None]) -> RunResult:
    found = collect(inputs)
    loaded = load_model(options)
    setup = resolve(options, checked, loaded)
    method = setup.method(checked.method)
    result = RunResult(None, setup.settings, failed=_report_problems(found, say))
    count = found.count if found.files is None else len(found.files)
    progress_bar = counter(count or 0, "explaining", "img", disable=say is quiet)

    def done(item: Any, pending: Any) -> None:
        explained = pending()
        if isinstance(explained, str):
            fail(item, explained)
            return
        result.images.append(explained)
        progress_bar.update(1)

    def fail(item: Any, error: str) -> None:
        say(f"normgrad: skipping {printable(str(item.path))}: {error}")
        result.failed.append({"index": item.index, "name": item.name, "image": str(item.path), "error": error})
        progress_bar.update(1)

    try:
        _loop(options, loaded, setup, method, say).run(_items(found, _entries(found), setup, options), done, fail)
    finally:
        progress_bar.close()
    result.images.sort(key=lambda e: e.index)
    return result


def _report_problems(found: Inputs, say: Callable[[str], None]) -> list[dict]:
    """One line per folder not searched; those that could not be read, as skipped inputs (they count in the exit status)."""
    for folder, why, _ in found.problems:
        say(f"normgrad: skipping {printable(folder)}: {why}")
    return [{"image": folder, "error": why} for folder, why, counts in found.problems if counts]


def _entries(found: Inputs) -> list[tuple[int, Path, str]]:
    """``(index, path, name)`` per input, in memory (names: the file's stem, or the dataset position)."""
    if found.files is not None:  # the name an output folder would give, short of clashes: the path below its root, no suffix
        return [(i, Path(f.path), Path(os.path.relpath(f.path, f.root)).with_suffix("").as_posix()) for i, f in enumerate(found.files)]
    if found.count is None:  # a loader of unknown length: entries as they come
        return []
    return [(i, Path(path), Path(path).name) for i, (path, _) in enumerate(found.paths)]


def _items(found: Inputs, entries: list[tuple[int, Path, str]], setup: Setup, options: ExplainOptions) -> Any:
    if found.files is None and found.count is None:
        from normgrad.run.inputs import unbounded_items

        return unbounded_items(found.source, setup.prepare)
    return found.read(entries, setup.prepare, options.workers or 0)


def _loop(options: ExplainOptions, loaded: Any, setup: Setup, method: Any, say: Callable[[str], None]) -> Any:
    if options.task == "detect":
        from normgrad.run import detect

        return detect.DetectLoop(loaded, setup.layers, method, model_device(loaded), options.batch_size or detect.DETECT_BATCH,
                                 options.combine, detect.min_score(options), detect.max_detections(options))  # fmt: skip
    device = model_device(loaded) if not isinstance(options.model, str) else options.device
    batch_size = options.batch_size or choose_batch_size(loaded, method, setup, model_device(loaded))
    layout = method.needs_model and setup.task == "classify" and run_layout(loaded, setup.preprocess, device) == torch.channels_last
    return BatchLoop(method, loaded, setup, device, batch_size, options.top_k, options.combine, options.save_layers, say,
                     channels_last=layout)  # fmt: skip


def _into_folder(inputs: Any, out: Path, options: ExplainOptions, checked: Any, shard: shards.Shard,
                 say: Callable[[str], None]) -> RunResult:  # fmt: skip
    from normgrad.gallery import Gallery
    from normgrad.store import OutputStore

    store = gallery = None
    try:
        if shard.rank == 0:
            try:
                found = collect(inputs, exclude=out)
                loaded = load_model(options)
                setup = resolve(options, checked, loaded)
                store = into_folder(options, setup, loaded, found.paths, out, shard.world)
                gallery = _start_gallery(store, setup.plan, say)
            except BaseException:
                shards.share(shard, None)  # the other ranks stop quietly; this one reports
                raise
            shards.share(shard, (setup, found if found.files is not None else None))
        else:
            shared = shards.share(shard)
            if shared is None:
                raise shards.Quiet(2)
            setup, found = shared
            if found is None:
                found = collect(inputs, exclude=out)
            loaded = load_model(options)
            store = OutputStore(out, setup.plan.run, shard.rank, storage=options.storage)
            gallery = Gallery(store, live=False) if setup.plan.gallery else None
        method = setup.method(checked.method)
        plan = setup.plan
        for path, reason in plan.skipped if shard.rank == 0 else []:
            say(f"normgrad: skipping {printable(str(path))}: {reason}")
        unsearched = _report_problems(found, say) if shard.rank == 0 else []
        _explain_share(options, method, loaded, setup, store, found, plan.work[shard.rank :: shard.world], shard, gallery, say)
        shards.finish_shard(shard)
        if shard.rank != 0:
            return RunResult(out, setup.settings, distributed=True, rank=shard.rank)
        manifest = store.finish(shard.world)
        if gallery is not None:
            gallery.finish(manifest.to_dict())
    finally:
        if gallery is not None:
            gallery.stop()
        if store is not None:
            store.close()
    entries = [manifest.entries.get(name, {"status": "missing", "name": name}) for name in [w.name for w in plan.work] + plan.done]
    failed = [
        {"image": e.get("image", e.get("name")), "error": e.get("error") or e.get("status")} for e in entries if e.get("status") != "ok"
    ]
    failed += [{"image": str(path), "error": reason} for path, reason in plan.skipped] + unsearched
    return RunResult(out, setup.settings, records=[e for e in entries if e.get("status") == "ok"], failed=failed,
                     done_earlier=len(plan.done), distributed=shard.distributed,
                     gallery=out / "index.html" if plan.gallery else None)  # fmt: skip


def _start_gallery(store: Any, plan: Any, say: Callable[[str], None]) -> Any:
    """Rank 0: the gallery as the run starts (every earlier entry, missing pictures made again), or ``None`` (no gallery)."""
    from normgrad.gallery import Gallery

    if not plan.gallery:
        return None
    gallery = Gallery(store)
    show = (lambda items: progress(items, "gallery pictures", "img")) if say is not quiet else (lambda items: items)
    gallery.start(store.read_manifest(), running=True, progress=show)
    return gallery


def _explain_share(options: ExplainOptions, method: Any, loaded: Any, setup: Setup, store: Any, found: Inputs, mine: list,
                   shard: shards.Shard, gallery: Any, say: Callable[[str], None]) -> None:  # fmt: skip
    """Explain this rank's images, writing each one's files and record as soon as its batch is done.

    The main thread runs the model and brings the maps to each photo's size; ``writers`` background threads
    encode and write them and add them to the gallery (:class:`~normgrad.run.writers.Writer`), while
    ``workers`` processes read the next images.  An input of a dataset whose pixels, outputs and settings are
    those recorded is done already (a resumed run): it is not written again.
    """
    run_id = setup.plan.run
    store.journal.append(
        {"type": "run", "run": run_id, "rank": shard.rank, "world": shard.world, "settings": setup.settings, "started": _now()}
    )
    work = {w.index: w for w in mine}
    recorded = _recorded(store, setup) if options.resume and found.files is None else {}
    progress_bar = counter(len(mine), "explaining", "img", disable=shard.rank != 0 or say is quiet)

    def fail(item: Any, error: str) -> None:
        say(f"normgrad: skipping {printable(str(item.path))}: {error}")
        record = {"type": "failed", "run": run_id, "rank": shard.rank, "index": item.index, "name": item.name,
                  "image": str(item.path), "input": item.identity, "error": error}  # fmt: skip
        store.journal.append(record)
        if gallery is not None:
            gallery.fail(record)
        progress_bar.update(1)

    def finished(futures: list) -> None:
        for future in futures:
            item, error = future.result()  # a StoreError stops the run
            if error is None:
                progress_bar.update(1)
            else:
                fail(item, error)

    writer = Writer(options.writers or 0, limit=2 * (options.batch_size or 8))
    loop = _loop(options, loaded, setup, method, say)

    def done(item: Any, pending: Any) -> None:
        finished(writer.submit(_write, options, setup, work[item.index], item, pending, shard.rank, store, gallery))

    try:
        entries = [(w.index, Path(w.path), w.name) for w in mine]
        items = found.read(entries, setup.prepare, options.workers or 0)
        if recorded:
            items = _not_done(items, recorded, store, progress_bar)
        loop.run(items, done, fail, after_batch=gallery.flush if gallery is not None else None)
        finished(writer.drain())
        if gallery is not None:
            gallery.flush()
    finally:
        writer.close()
        progress_bar.close()
        store.journal.close()


def _recorded(store: Any, setup: Setup) -> dict[str, dict]:
    """The entries of ``store``'s manifest made with this run's settings, by name."""
    manifest = store.read_manifest() or {}
    runs = manifest.get("runs") or {}
    same = {run for run, info in runs.items() if isinstance(info, dict) and info.get("settings") == setup.settings}
    images = manifest.get("images") or []
    return {e["name"]: e for e in images if isinstance(e, dict) and e.get("status", "ok") == "ok" and e.get("run") in same and "name" in e}


def _not_done(items: Any, recorded: dict[str, dict], store: Any, progress_bar: Any) -> Any:
    """The items whose recorded entry does not match them (pixels and outputs): the others are done already."""
    for item in items:
        entry = recorded.get(item.name)
        if entry is not None and item.identity is not None and entry.get("input") == item.identity and store.outputs_intact(entry):
            progress_bar.update(1)
            continue
        yield item


def _write(options: ExplainOptions, setup: Setup, work: Any, item: Any, pending: Any, rank: int, store: Any,
           gallery: Any) -> tuple[Any, str | None]:  # fmt: skip
    """A writer thread: one image's maps at its size, its files and record, committed by the store, then its gallery
    pictures; ``(item, None)`` or ``(item, why it was skipped)``."""
    from normgrad.store import StoreError

    explained = pending()
    if isinstance(explained, str):
        return item, explained
    try:
        files, record = outputs(explained, work.name, run=setup.plan.run, rank=rank, identity=item.identity, layers=setup.layers,
                                overlay=options.overlay, npy=options.npy, map_dtype=options.map_dtype,
                                overlay_format=options.overlay_format)  # fmt: skip
        store.save(work, files, record)
    except StoreError:
        raise
    except ValueError as error:  # a NormGradError (file in the way) or a value strict JSON refuses
        return item, str(error)
    if gallery is not None:
        gallery.add(record, explained.photo, explained.maps)
    return item, None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
