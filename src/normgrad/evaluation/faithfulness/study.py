"""``normgrad eval faithfulness``: ROAD and insertion/deletion for every method, on two models, with verdicts.

Regimes:

``fashion-mnist``
    the training study's CNN (:mod:`normgrad.evaluation.training.cnn`,
    trained here and cached), a seeded draw of test images, its layers
    ``relu2``, ``relu3``; the explain default's rule applied to them
    (selective at ``relu2``, the stride-2 fine layer; gradient × activation
    at ``relu3``, the layer before the head): the rule's own probe finds a
    single stage output in this flat ``nn.Sequential`` and refuses it.
``photos``
    the embedded EfficientNet-Lite0 on the packaged photos (scikit-image's,
    and matplotlib's ``grace_hopper`` when present) at the model's own
    input size (shorter side 224: ROAD solves one sparse system per image,
    fraction and order, so the default's up-to-448 input is left out), the
    stage outputs for the registry's layer methods, the explain default's
    layers and methods.

Target: the model's predicted class (faithfulness is about what the model
does).  Every subject of :mod:`.maps` is scored on the same images with the
same ranking tie-breaks and the same imputation noise (:mod:`.scoring`).
Statistics (:mod:`normgrad.evaluation.training.stats`): means with 95 %
bootstrap intervals over images (BCa; under 20 images ``± t·SE_jackknife``),
paired differences with Wilcoxon p; claims (:data:`CLAIMS`) get a computed
verdict.
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
from torch import Tensor, nn

from normgrad.errors import NormGradError
from normgrad.evaluation.faithfulness.anchors import ANCHORS
from normgrad.evaluation.faithfulness.maps import DEFAULT, Subject, method_maps
from normgrad.evaluation.faithfulness.pixels import PixelSpace
from normgrad.evaluation.faithfulness.road import FRACTIONS
from normgrad.evaluation.faithfulness.scoring import ScoreSettings, score_maps
from normgrad.evaluation.faithfulness.shortcut_study import QUICK, ShortcutConfig, run_shortcut_study, with_verdicts
from normgrad.evaluation.faithfulness.summary import summarise

REGISTRY_METHODS = ("normgrad", "selective", "meta", "meta:selective", "adversarial", "gradcam", "gradient", "input_x_gradient",
                    "guided_backprop", "integrated_gradients", "center", "random")  # fmt: skip
FASHION_DEFAULT = {"relu2": "selective", "relu3": "scaling+sum"}
REGIMES = ("fashion-mnist", "photos", "shortcut")
RECORDS = "faithfulness-records.json"  # per-image values (not committed): ``--merge`` builds one report from several runs


@dataclass(frozen=True)
class FaithfulnessConfig:
    """Sizes of the study (the defaults are the full run)."""

    quick: bool = False
    fashion_images: int = 200
    photos: tuple[str, ...] | None = None  # None: every packaged photo
    methods: tuple[str, ...] = (DEFAULT, *REGISTRY_METHODS, *ANCHORS)
    photo_methods: tuple[str, ...] | None = None  # None: ``methods``
    per_layer: tuple[str, ...] = ("fashion-mnist", "photos")  # the regimes with a row per layer too ...
    photo_per_layer: tuple[str, ...] = (DEFAULT,)  # ... on the photos, for these methods (cost)
    fractions: tuple[float, ...] = FRACTIONS
    photo_fractions: tuple[float, ...] = (0.2, 0.5, 0.8)
    fashion_iterations: int = 28  # RISE substrates: one image row (28 pixels) per iteration
    fashion_road_iterations: int | None = 14  # ROAD substrate: a sparse solve per iteration
    photo_iterations: int = 16
    photo_road_iterations: int | None = None  # a sparse solve of ~67 000 pixels per iteration: not run on photos
    batch_size: int = 50
    resamples: int = 2000
    seed: int = 0
    model: Any = None  # TrainConfig of the Fashion-MNIST CNN (None: the training study's)
    regimes: tuple[str, ...] = ("fashion-mnist", "photos", "shortcut")
    shortcut: ShortcutConfig = ShortcutConfig()


def quick_config() -> FaithfulnessConfig:
    from normgrad.evaluation.training.cnn import TrainConfig

    return FaithfulnessConfig(
        quick=True,
        fashion_images=20,
        photos=("chelsea",),
        per_layer=("fashion-mnist",),
        photo_methods=(DEFAULT, "normgrad", "meta", "gradcam", "RefineCAM", "random"),
        fractions=(0.2, 0.5, 0.8),
        photo_fractions=(0.3, 0.7),
        fashion_road_iterations=4,
        photo_iterations=8,
        photo_road_iterations=None,
        resamples=500,
        model=TrainConfig(epochs=1, train_images=6000),
        shortcut=QUICK,
    )


def small_config() -> FaithfulnessConfig:
    """Fewer images, fractions and photos: docs/faithfulness.md (about 80 min of computation on a busy 2-core machine)."""
    from normgrad.evaluation.training.cnn import TrainConfig

    return FaithfulnessConfig(
        fashion_images=40,
        fractions=(0.1, 0.3, 0.5, 0.7, 0.9),
        fashion_road_iterations=7,
        photos=("chelsea", "coffee", "camera"),
        photo_fractions=(0.3, 0.7),
        photo_iterations=8,
        photo_per_layer=(),
        model=TrainConfig(epochs=2, train_images=20000),
    )


PRESETS = {"quick": quick_config, "small": small_config, "full": FaithfulnessConfig}


@dataclass
class Regime:
    name: str
    description: str
    model: nn.Module
    inputs: Tensor
    targets: Tensor
    space: PixelSpace
    layers: list[str]
    default_methods: dict[str, str]
    settings: ScoreSettings
    names: list[str] = field(default_factory=list)


def fashion_regime(config: FaithfulnessConfig, data: Path | None, cache: Path | None, log: Callable[[str], None]) -> Regime:
    from normgrad.evaluation.training.cnn import SALIENCY_LAYERS, TrainConfig, load_or_train, predictions
    from normgrad.evaluation.training.fashion_mnist import load_split

    train, test = load_split("train", data), load_split("test", data)
    model_config = config.model or TrainConfig()
    log(f"fashion-mnist: loading or training the CNN ({model_config.epochs} epochs; cache {cache or 'default'})")
    trained = load_or_train(train, test, model_config, config.seed, cache=cache, progress=_bar("training"))
    chosen = torch.randperm(len(test), generator=torch.Generator().manual_seed(config.seed))[: config.fashion_images]
    inputs = trained.normalise(test.images[chosen])
    targets = predictions(trained.model, inputs)
    description = (
        f"the training study's CNN (test accuracy {trained.test_accuracy:.4f}, {model_config.epochs} epoch(s)), "
        f"{len(chosen)} test images (a seeded draw), target = the predicted class"
    )
    settings = ScoreSettings(config.fractions, config.fashion_iterations, config.fashion_road_iterations, seed=config.seed)
    space = PixelSpace((trained.mean,), (trained.std,))
    layers = list(SALIENCY_LAYERS)
    return Regime("fashion-mnist", description, trained.model, inputs, targets, space, layers, dict(FASHION_DEFAULT), settings)


def photo_regime(config: FaithfulnessConfig) -> Regime:
    from normgrad.evaluation.photos import PHOTOS, load_photos
    from normgrad.models import load

    loaded = load()
    names = [n for n in (config.photos or tuple(PHOTOS)) if n in PHOTOS]
    photos = load_photos(names)
    if config.photos is None:
        try:
            from matplotlib import cbook
            from PIL import Image

            with cbook.get_sample_data("grace_hopper.jpg") as handle:
                photos["grace_hopper"] = Image.open(handle).convert("RGB")
        except ImportError:
            pass
    inputs = [loaded.preprocess(photo)[None] for photo in photos.values()]
    with torch.no_grad():
        targets = torch.cat([loaded.model(x).argmax(1) for x in inputs])
    defaults = loaded.explain_defaults()
    layers = loaded.default_layers(inputs[0])
    description = ", ".join(f"{name} → {loaded.class_name(int(t))}" for name, t in zip(photos, targets))
    settings = ScoreSettings(config.photo_fractions, config.photo_iterations, config.photo_road_iterations, seed=config.seed)
    space = PixelSpace(loaded.preprocess.mean, loaded.preprocess.std)
    regime = Regime("photos", description, loaded.model, inputs, targets, space, layers, dict(defaults.methods), settings, list(photos))
    return regime


def run_regime(regime: Regime, config: FaithfulnessConfig, progress: Callable[[int, str], Any]) -> dict[str, Any]:
    """Per subject: per-image values of every metric, and seconds per image of the maps."""
    methods = config.photo_methods if regime.name == "photos" and config.photo_methods else config.methods
    batches = regime.inputs if isinstance(regime.inputs, list) else list(regime.inputs.split(config.batch_size))
    values: dict[Subject, dict[str, list[np.ndarray]]] = {}
    seconds: dict[str, float] = {}
    bar = progress(len(methods) * sum(len(b) for b in batches), regime.name)
    try:
        for name in methods:
            first = 0
            for x in batches:
                y = regime.targets[first : first + len(x)]
                maps, took = method_maps(name, regime.model, x, y, regime.layers, regime.default_methods,
                                         per_layer=_per_layer(regime.name, name, config), seed=config.seed, first_index=first)  # fmt: skip
                seconds[name] = seconds.get(name, 0.0) + took
                for subject, m in maps.items():
                    scores = score_maps(regime.model, x, m, y, regime.space, regime.settings, first_index=first)
                    for metric, v in scores.items():
                        values.setdefault(subject, {}).setdefault(metric, []).append(v)
                first += len(x)
                bar.update(len(x))
    finally:
        bar.close()
    count = sum(len(b) for b in batches)
    return {
        "values": {s: {m: np.concatenate(v) for m, v in metrics.items()} for s, metrics in values.items()},
        "seconds_per_image": {name: s / count for name, s in seconds.items()},
        "images": count,
    }


def _per_layer(regime: str, method: str, config: FaithfulnessConfig) -> bool:
    return regime in config.per_layer and (regime != "photos" or method in config.photo_per_layer)


def run_faithfulness(
    config: FaithfulnessConfig,
    out: Path,
    *,
    data: Path | None = None,
    cache: Path | None = None,
    log: Callable[[str], None] = print,
    command: str = "normgrad eval faithfulness",
    regenerate: str = "normgrad eval faithfulness --out docs",
) -> dict[str, Any]:
    """Run the study and write ``out/faithfulness.json``, ``faithfulness.md`` and the per-image records; returns the JSON document."""
    unknown = [r for r in config.regimes if r not in REGIMES]
    if unknown:
        raise NormGradError(f"unknown regime(s) {unknown}; valid: {', '.join(REGIMES)}")
    started = time.perf_counter()
    results, regimes, timings = {}, {}, {}
    shortcut = None
    for name in config.regimes:
        t = time.perf_counter()
        if name == "shortcut":
            shortcut = run_shortcut_study(config.shortcut, data=data, log=log)
            timings[name] = time.perf_counter() - t
            continue
        regime = fashion_regime(config, data, cache, log) if name == "fashion-mnist" else photo_regime(config)
        rows = "per layer too" if name in config.per_layer else "final maps"
        count = len(config.photo_methods if name == "photos" and config.photo_methods else config.methods)
        log(f"{name}: {len(regime.targets)} images × {count} methods ({rows})")
        results[name] = run_regime(regime, config, _bar_with_description)
        regimes[name] = {
            "description": regime.description,
            "layers": regime.layers,
            "default": regime.default_methods,
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(regime.settings).items()},
            "images": results[name]["images"],
            "photos": regime.names,
        }
        timings[name] = time.perf_counter() - t
    records = {
        "results": {name: _plain(result) for name, result in results.items()},
        "regimes": regimes,
        "timings_s": timings,
        "command": command,
    }
    if shortcut is not None:
        records["shortcut"] = shortcut
    out.mkdir(parents=True, exist_ok=True)
    (out / RECORDS).write_text(json.dumps(records) + "\n")
    return write_report(config, out, [records], time.perf_counter() - started, regenerate)


def write_report(
    config: FaithfulnessConfig,
    out: Path,
    parts: list[dict],
    seconds: float | None = None,
    regenerate: str = "normgrad eval faithfulness --out docs",
) -> dict[str, Any]:
    """``faithfulness.json`` and ``.md`` from the per-image records of one run, or of runs of separate regimes
    (``--regime``, merged with ``--merge``: every image and method is seeded alone, so the parts equal one run)."""
    from normgrad.evaluation.faithfulness.markdown import render

    results, regimes, timings, shortcut = {}, {}, {}, None
    for part in parts:
        for name, result in part["results"].items():
            if name in results:
                raise NormGradError(f"regime {name!r} appears in two record files")
            results[name] = _from_plain(result)
        regimes.update(part["regimes"])
        timings.update(part["timings_s"])
        shortcut = part.get("shortcut", shortcut)
    document = summarise(results, regimes, resamples=config.resamples, seed=config.seed)
    document["config"] = {k: v for k, v in asdict(config).items() if k != "model"}
    document["timings_s"] = {**timings, "total": seconds if seconds is not None else sum(timings.values())}
    fallback = "normgrad eval faithfulness"
    commands = [part.get("command") or (f"{fallback} --regime shortcut" if "shortcut" in part else fallback) for part in parts]
    document["command"] = regenerate
    document["parts"] = list(dict.fromkeys(commands))
    if shortcut is not None:  # verdicts from the recorded intervals, by today's rule
        document["shortcut"] = {**shortcut, "claims": with_verdicts(shortcut["claims"])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "faithfulness.json").write_text(json.dumps(document, indent=1, default=float) + "\n")
    (out / "faithfulness.md").write_text(render(document))
    return document


def _plain(result: dict[str, Any]) -> dict[str, Any]:
    values = [
        {"method": s.method, "layer": s.layer, "values": {m: v.tolist() for m, v in metrics.items()}}
        for s, metrics in result["values"].items()
    ]
    return {"values": values, "seconds_per_image": result["seconds_per_image"], "images": result["images"]}


def _from_plain(result: dict[str, Any]) -> dict[str, Any]:
    values = {Subject(row["method"], row["layer"]): {m: np.asarray(v) for m, v in row["values"].items()} for row in result["values"]}
    return {"values": values, "seconds_per_image": result["seconds_per_image"], "images": result["images"]}


def _bar(description: str) -> Callable[[int], Any]:
    return lambda total: _bar_with_description(total, description)


def _bar_with_description(total: int, description: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, file=sys.stderr, leave=False, mininterval=1.0)


def read_records(path: Path) -> dict[str, Any]:
    """One run's per-image records (``faithfulness-records.json``), checked for shape."""
    try:
        records = json.loads(Path(path).read_text())
        if not {"results", "regimes", "timings_s"} <= set(records):
            raise KeyError("results, regimes, timings_s")
    except (OSError, ValueError, KeyError) as error:
        raise NormGradError(f"{path} is not a faithfulness-records.json written by normgrad eval faithfulness ({error})") from error
    return records
