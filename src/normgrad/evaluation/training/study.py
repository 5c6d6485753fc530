"""The whole study in one call: data, model, per-image study (two regimes), ROAR/KAR, JSON, figures, ``training.md``.

``run_study(StudyConfig(), out)`` is what ``normgrad eval training`` runs;
``QUICK`` is the CI-sized configuration (minutes, not for conclusions).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from normgrad.errors import NormGradError
from normgrad.evaluation.training import figures, stats, summary
from normgrad.evaluation.training.cnn import SALIENCY_LAYERS, TrainConfig, TrainedModel, load_or_train
from normgrad.evaluation.training.fashion_mnist import CLASSES, Split, load_split
from normgrad.evaluation.training.markdown import render
from normgrad.evaluation.training.masking import FILLS, fill_for, keep, overlap, tie_breaker, top_mask
from normgrad.evaluation.training.per_image import FRACTIONS, LEARNING_RATES, PAPER_LR, Group, Regime, run_per_image
from normgrad.evaluation.training.roar import RoarRun
from normgrad.evaluation.training.saliency_maps import METHODS, method_maps, study_method


@dataclass(frozen=True)
class StudyConfig:
    """Sizes of every part of the study (the defaults are the full run)."""

    quick: bool = False
    images: int = 1000  # Fashion-MNIST test images in the per-image study
    pool: int = 10  # held-out test images per class for the class measure
    methods: tuple[str, ...] = METHODS
    fractions: tuple[float, ...] = FRACTIONS
    lrs: tuple[float, ...] = LEARNING_RATES
    fills: tuple[str, ...] = FILLS
    model: TrainConfig = TrainConfig()
    seed: int = 0
    precision: str = "float32"  # of the measured steps on Fashion-MNIST (float64: exact to ~1e-15, about twice slower)
    imagenet: bool = True
    imagenet_lrs: tuple[float, ...] = (PAPER_LR,)  # the learning-rate axis runs on Fashion-MNIST
    photos: tuple[str, ...] | None = None  # None: every photo of evaluation.photos plus matplotlib's grace_hopper
    roar: bool = True
    roar_methods: tuple[str, ...] = METHODS
    roar_fractions: tuple[float, ...] = FRACTIONS
    roar_seeds: tuple[int, ...] = (0, 1, 2)
    roar_train_images: int = 4000
    roar_test_images: int = 2000
    roar_model: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, width=8))
    resamples: int = 2000
    jobs: int = 1  # worker processes retraining for ROAR/KAR alongside the per-image study (0: sequentially, here)


QUICK = StudyConfig(
    quick=True,
    images=40,
    pool=6,
    fractions=(0.10, 0.50),
    model=TrainConfig(epochs=1, train_images=12000),
    photos=("chelsea",),  # one photo: EfficientNet-Lite0's per-image study is the quick run's largest phase
    roar_methods=("normgrad", "selective", "meta", "meta:selective", "random"),
    roar_fractions=(0.10, 0.50),
    roar_seeds=(0, 1),
    roar_train_images=1000,
    roar_test_images=500,
    roar_model=TrainConfig(epochs=1, width=8),
    resamples=500,
)


def _progress(total: int, description: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)


def fashion_regime(trained: TrainedModel, test: Split, config: StudyConfig) -> Regime:
    """``config.images`` test images (a seeded draw), grouped by class, each class with its own held-out pool."""
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(config.seed))
    chosen, rest = order[: config.images], order[config.images :]
    if len(chosen) < config.images:
        raise NormGradError(f"the test split has {len(test)} images; the study asked for {config.images}")
    inputs = trained.normalise(test.images)
    groups = []
    for label in range(len(CLASSES)):
        mine = chosen[test.labels[chosen] == label].tolist()
        pool = rest[test.labels[rest] == label][: config.pool]
        if not mine:
            continue
        if len(pool) < config.pool:
            raise NormGradError(f"class {label} has only {len(pool)} held-out test images; the study asked for {config.pool}")
        for start in range(0, len(mine), 50):
            indices = mine[start : start + 50]
            groups.append(Group(inputs[indices], test.labels[indices], [], list(SALIENCY_LAYERS), inputs[pool], test.labels[pool]))
    position = 0
    for group in groups:  # study positions in group order
        group.indices = list(range(position, position + len(group.labels)))
        position += len(group.labels)
    description = f"a seeded draw from the 10 000, {len(groups)} groups by class; each class's pool: {config.pool} other test images"
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(config.precision)
    if dtype is None:
        raise NormGradError(f"precision must be float32 or float64; got {config.precision!r}")
    return Regime(
        "fashion-mnist", description, trained.model, groups, torch.zeros(1), dtype, True, config.seed, pixel_std=torch.tensor([trained.std])
    )


def imagenet_regime(config: StudyConfig) -> Regime:
    """The embedded EfficientNet-Lite0 on the real photos that ship with scikit-image (and matplotlib)."""
    from normgrad.evaluation.photos import PHOTOS, load_photos
    from normgrad.models import load

    loaded = load()
    names = [n for n in (config.photos or tuple(PHOTOS)) if n in PHOTOS]
    photos = load_photos(names)
    if config.photos is None or "grace_hopper" in config.photos:
        photos["grace_hopper"] = _grace_hopper()
    groups = []
    for i, photo in enumerate(photos.values()):
        x = loaded.preprocess(photo)[None]
        with torch.no_grad():
            label = loaded.model(x).argmax(1)
        groups.append(Group(x, label, [i], loaded.default_layers(x)))
    description = ", ".join(f"{name} → {loaded.class_name(int(g.labels))}" for name, g in zip(photos, groups))
    std = torch.tensor(loaded.preprocess.std)
    return Regime("imagenet", description, loaded.model, groups, torch.zeros(3), torch.float32, False, config.seed, pixel_std=std)


def _grace_hopper() -> Any:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return Image.open(handle).convert("RGB")


def run_study(
    config: StudyConfig,
    out: Path,
    *,
    data: Path | None = None,
    cache: Path | None = None,
    retrain: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run everything and write ``out/training.md``, ``training.json``, the figures and ``training-records.npz``."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    train_split, test_split = load_split("train", data), load_split("test", data)
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    log(f"model: loading or training ({config.model.epochs} epochs; cache {cache or 'default'})")
    trained = load_or_train(train_split, test_split, config.model, config.seed, cache=cache, retrain=retrain, progress=_bar("training"))
    timings["model"] = time.perf_counter() - t
    log(f"model: test accuracy {trained.test_accuracy:.4f} (trained in {trained.train_seconds:.0f} s; {trained.cached_at})")

    roar_run, roar, roar_result = None, None, None
    if config.roar:  # maps and masks now; the retrainings run in worker processes while the per-image study runs here
        t = time.perf_counter()
        generator = torch.Generator().manual_seed(config.seed + 1)
        train_index = torch.randperm(len(train_split), generator=generator)[: config.roar_train_images]
        test_index = torch.randperm(len(test_split), generator=generator)[: config.roar_test_images]
        roar_run = RoarRun(
            trained,
            trained.normalise(train_split.images[train_index]),
            train_split.labels[train_index],
            trained.normalise(test_split.images[test_index]),
            test_split.labels[test_index],
            config.roar_methods,
            fractions=config.roar_fractions,
            seeds=config.roar_seeds,
            config=config.roar_model,
            layers=SALIENCY_LAYERS,
            seed=config.seed,
            jobs=config.jobs,
        )
        log(f"ROAR/KAR: {roar_run.runs} retrainings on {config.roar_train_images} images, {config.jobs} worker process(es)")
        roar_run.start()
        timings["roar_kar_maps"] = time.perf_counter() - t

    per_image, records = {}, {}
    t = time.perf_counter()
    log(f"per-image study: {config.images} Fashion-MNIST test images × {len(config.methods)} methods")
    fashion = fashion_regime(trained, test_split, config)
    result = run_per_image(fashion, config.methods, fractions=config.fractions, lrs=config.lrs, fills=config.fills, progress=_progress)
    records["fashion-mnist"] = result
    per_image["fashion-mnist"] = summary.per_image_summary(result, resamples=config.resamples)
    per_image["fashion-mnist"]["overlap"] = meta_overlap(trained, fashion, config.lrs, summary.PRIMARY_FRACTION)
    timings["per_image_fashion"] = time.perf_counter() - t

    if config.imagenet:
        t = time.perf_counter()
        log("per-image study: EfficientNet-Lite0 on real photos")
        regime = imagenet_regime(config)
        result = run_per_image(
            regime,
            config.methods,
            fractions=config.fractions,
            lrs=config.imagenet_lrs,
            fills=config.fills,
            class_lrs=(),
            progress=_progress,
        )
        records["imagenet"] = result
        per_image["imagenet"] = summary.per_image_summary(result, resamples=config.resamples)
        timings["per_image_imagenet"] = time.perf_counter() - t

    if roar_run:
        t = time.perf_counter()
        log("ROAR/KAR: waiting for the retrainings")
        roar_result = roar_run.collect(progress=_progress)
        roar = summary.roar_summary(roar_result)
        timings["roar_kar_wait"] = time.perf_counter() - t
        log(f"ROAR/KAR: {roar_result.seconds / 60:.1f} min from the first map to the last retraining")

    t = time.perf_counter()
    _mask_examples(out / "training_masks.png", trained, test_split, config)
    timings["figures"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started

    document = {
        "config": _config_dict(config),
        "threads": torch.get_num_threads(),
        "timings_s": timings,
        "model": {
            "parameters": sum(p.numel() for p in trained.model.parameters()),
            "test_accuracy": trained.test_accuracy,
            "train_seconds": trained.train_seconds,
            "train_timing_note": f"when it was trained and cached; this run used {torch.get_num_threads()} torch thread(s)",
            "train_images": config.model.train_images or len(train_split),
            "epochs": config.model.epochs,
            "seed": config.seed,
            "layers": list(SALIENCY_LAYERS),
        },
        "per_image": per_image,
        "roar": roar,
        "claims": summary.claims(per_image, roar),
    }
    write_outputs(document, out)
    arrays = {f"{regime}.{key}": value for regime, r in records.items() for key, value in r.arrays().items()}
    if roar_result is not None:
        arrays |= {"roar.correct": roar_result.correct, "roar.reference": roar_result.reference}
    np.savez_compressed(out / "training-records.npz", **arrays)
    log(f"wrote {out / 'training.md'} in {timings['total'] / 60:.1f} min")
    return document


def write_outputs(document: dict[str, Any], out: Path) -> None:
    """``training.json``, ``training.md`` and the figures drawn from the document (all but the example masks)."""
    per_image, roar = document["per_image"], document.get("roar")
    if "fashion-mnist" in per_image:
        figures.impact_figure(out / "training_per_image.png", per_image["fashion-mnist"], PAPER_LR, "Fashion-MNIST, CNN trained here")
        figures.lr_figure(out / "training_lr.png", per_image["fashion-mnist"], summary.PRIMARY_FRACTION, summary.PRIMARY_FILL)
    if "imagenet" in per_image:
        figures.impact_figure(out / "training_imagenet.png", per_image["imagenet"], PAPER_LR, "EfficientNet-Lite0, real photos")
    if roar:
        figures.roar_figure(out / "training_roar.png", roar)
    (out / "training.json").write_text(json.dumps(document, indent=1, default=float))
    (out / "training.md").write_text(render(document))


def _bar(description: str) -> Callable[[int], Any]:
    return lambda total: _progress(total, description)


def _config_dict(config: StudyConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config), default=str))


META_PAIRS = (("meta", "normgrad"), ("meta:selective", "selective"), ("adversarial", "normgrad"), ("adversarial", "meta"))


def meta_overlap(trained: TrainedModel, regime: Regime, lrs: tuple[float, ...], fraction: float) -> list[dict[str, Any]]:
    """How much the inner step changes the selection: the share of top-``fraction`` pixels two maps have in common, per lr."""
    rows = []
    for lr in lrs:
        shares: dict[tuple[str, str], list[Tensor]] = {pair: [] for pair in META_PAIRS}
        for group in regime.groups:
            ties = tie_breaker(len(group.labels), *group.inputs.shape[-2:], seed=regime.seed * 1_000_003 + group.indices[0])
            masks = {
                name: top_mask(method_maps(study_method(name, lr), trained.model, group.inputs, group.labels, group.layers), fraction, ties)
                for name in {name for pair in META_PAIRS for name in pair}
            }
            for a, b in META_PAIRS:
                shares[(a, b)].append(overlap(masks[a], masks[b]))
        for (a, b), values in shares.items():
            rows.append({"a": a, "b": b, "lr": lr, "fraction": fraction, **stats.mean_interval(torch.cat(values).numpy()).as_dict()})
    return rows


def _mask_examples(path: Path, trained: TrainedModel, test: Split, config: StudyConfig) -> None:
    """Two test images of different classes, what each method keeps of them at each k (mean fill)."""
    first = int(test.labels[0])
    second = int((test.labels != first).nonzero()[0])
    indices = [0, second]
    x, y = trained.normalise(test.images[indices]), test.labels[indices]
    ties = tie_breaker(len(indices), *x.shape[-2:], seed=config.seed)
    fill = fill_for("mean", x, torch.zeros(1))
    kept = {}
    for name in config.methods:
        maps = method_maps(study_method(name, PAPER_LR), trained.model, x, y, SALIENCY_LAYERS, seed=config.seed)
        kept[name] = [keep(x, top_mask(maps, fraction, ties), fill) for fraction in config.fractions]
    figures.masks_figure(path, x, kept, config.fractions, [CLASSES[int(label)] for label in y])
