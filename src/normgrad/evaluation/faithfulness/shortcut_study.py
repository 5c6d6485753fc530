"""Ground truth for "the pixels that matter": a CNN trained on Fashion-MNIST with a planted shortcut.

1. **Reliance.**  A :class:`~normgrad.evaluation.training.cnn.FashionCNN` is
   trained (no flips: a flip would move the patch) on training images of which
   a known share carries the patch of their label
   (:mod:`normgrad.evaluation.shortcut`).  Its test accuracy is measured on
   clean images, with the true class's patch, and with another class's patch
   (and how often it then predicts the patch's class): how much it relies on
   the patch.
2. **Where the maps look.**  On test images carrying their class's patch,
   target = the label, per method: the share of the map's positive mass on
   the patch's 16 pixels (chance: 16 / 784), the share of the map's top 16
   pixels on the patch, and the per-image AUROC of the map's values for
   patch vs other pixels (ties averaged; chance 0.5); means with 95 %
   bootstrap intervals over images.
3. **The inner step.**  Per image, the paper's SGD step (lr 0.0025) on the
   image with only its top-k % pixels kept (the rest: the dataset mean) and
   its loss reduction on the whole image, over the whole image's own step's
   (share = Σ δ / Σ Δ); the same for the patch's pixels alone; and split by
   whether the top-k pixels hold the whole patch.
4. **Positive controls** (Rong et al. 2022): the mask of image ``i``
   (its top-k % NormGrad pixels) is applied to a *different*, randomly drawn
   image, and a fresh CNN learns image ``i``'s class from the result: from
   the mask alone, from the other image with the mask's pixels set to the
   dataset mean (ROAR's fill), and with them imputed by ROAD's noisy linear
   imputation (and the same without its noise: Fashion-MNIST's background is
   exactly 0, so noise on imputed pixels alone can draw the mask); and from
   the other image untouched (chance).  Accuracy above
   chance = the class leaks through the mask's shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from normgrad.errors import NormGradError
from normgrad.evaluation.faithfulness.imputation import impute_seeded
from normgrad.evaluation.faithfulness.maps import DEFAULT, Subject, method_maps
from normgrad.evaluation.shortcut import plant_shortcut, stamp
from normgrad.evaluation.training import stats

METHODS = (DEFAULT, "normgrad", "selective", "meta", "meta:selective", "adversarial", "gradcam", "gradient", "random")
LAYERS = ("relu2", "relu3")
DEFAULT_METHODS = {"relu2": "selective", "relu3": "scaling+sum"}
PATCH_PIXELS = 16


@dataclass(frozen=True)
class ShortcutConfig:
    share: float = 0.5  # of the training images carrying their label's patch
    kind: str = "position"
    train_images: int = 20000
    epochs: int = 2
    eval_images: int = 300
    methods: tuple[str, ...] = METHODS
    keep: float = 0.05  # the inner step's top-k share
    lr: float = 2.5e-3
    control_train: int = 6000
    control_test: int = 2000
    control_keep: float = 0.2
    control_epochs: int = 2
    resamples: int = 2000
    seed: int = 0


QUICK = ShortcutConfig(train_images=6000, epochs=1, eval_images=60, control_train=1500, control_test=500, control_epochs=1, resamples=500)


def patch_scores(maps: Tensor, patch: Tensor, seed: int = 0) -> dict[str, np.ndarray]:
    """Per image: positive mass on the patch, share of the top-|patch| pixels on it, AUROC of patch vs other pixels."""
    from scipy.stats import rankdata

    from normgrad.evaluation.faithfulness.pixels import ranking

    flat, inside = maps.flatten(1).double(), patch.flatten(1)
    positive = flat.clamp_min(0)
    total = positive.sum(1)
    mass = torch.where(total > 0, (positive * inside).sum(1) / total.clamp_min(1e-300), inside.double().mean(1))
    count = inside.sum(1)
    order = ranking(maps, seed)
    top = torch.stack([inside[i, order[i, : int(count[i])]].double().mean() for i in range(len(flat))])
    auroc = []
    for values, member in zip(flat.numpy(), inside.numpy()):
        ranks = rankdata(values)  # ties averaged
        positives, negatives = int(member.sum()), int((~member).sum())
        auroc.append((ranks[member].sum() - positives * (positives + 1) / 2) / (positives * negatives))
    return {"mass": mass.numpy(), "top": top.numpy(), "auroc": np.asarray(auroc)}


def run_shortcut_study(config: ShortcutConfig, *, data: Any = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Everything above; returns the JSON document (see :func:`markdown`)."""
    from normgrad.evaluation.training.cnn import TrainConfig, accuracy, normalise, predictions, train
    from normgrad.evaluation.training.fashion_mnist import load_split

    started = time.perf_counter()
    train_split, test_split = load_split("train", data), load_split("test", data)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(train_split), generator=generator)
    index = order[: config.train_images]
    planted = plant_shortcut(train_split.images[index], train_split.labels[index], config.share, config.seed, kind=config.kind)
    mean, std = float(planted.images.double().mean() / 255), float((planted.images.double() / 255).std())
    train_config = TrainConfig(epochs=config.epochs, flip=False, width=16)
    log(f"shortcut: training a CNN on {config.train_images} images, {config.share:.0%} with their label's patch")
    model = train(normalise(planted.images, mean, std), planted.labels, train_config, config.seed)

    # 1. reliance
    images, labels = test_split.images, test_split.labels
    other = (labels + 1 + torch.randint(0, 9, labels.shape, generator=generator)) % 10
    with_true, true_mask = stamp(images, labels, config.kind)
    with_other, _ = stamp(images, other, config.kind)
    reliance = {
        "clean": accuracy(model, normalise(images, mean, std), labels),
        "true_patch": accuracy(model, normalise(with_true, mean, std), labels),
        "other_patch": accuracy(model, normalise(with_other, mean, std), labels),
        "follows_other_patch": float((predictions(model, normalise(with_other, mean, std)) == other).double().mean()),
        "test_images": len(labels),
    }
    log(f"shortcut: reliance {reliance}")

    # 2. where the maps look (test images with their class's patch), and 3. the inner step
    chosen = torch.randperm(len(labels), generator=generator)[: config.eval_images]
    x, y, patch = normalise(with_true[chosen], mean, std), labels[chosen], true_mask[chosen]
    per_method, inner, auroc = {}, {}, {}
    from normgrad.evaluation.training.inner_step import InnerStep
    from normgrad.evaluation.training.masking import keep, tie_breaker, top_mask

    step = InnerStep(model)
    full_gradients = step.gradients(x, y)
    loss = step.losses(x, y)
    full_reduction = (loss - step.losses_after_steps(full_gradients, config.lr, x, y)).double().numpy()
    fill = torch.zeros(1)  # the dataset mean in model space

    def reduction(mask: Tensor) -> np.ndarray:
        gradients = step.gradients(keep(x, mask, fill), y)
        return (loss - step.losses_after_steps(gradients, config.lr, x, y)).double().numpy()

    patch_only = reduction(patch)
    inner["patch_only"] = stats.share(patch_only, full_reduction, resamples=config.resamples, seed=config.seed).as_dict()
    ties = tie_breaker(len(x), 28, 28, config.seed)
    for name in config.methods:
        maps = torch.cat([_final_map(name, model, x[i : i + 100], y[i : i + 100], config.seed, i) for i in range(0, len(x), 100)])
        scores = patch_scores(maps, patch, config.seed)
        auroc[name] = scores["auroc"]
        per_method[name] = {k: stats.mean_interval(v, resamples=config.resamples, seed=config.seed).as_dict() for k, v in scores.items()}
        kept = top_mask(maps, config.keep, ties)
        holds_patch = (kept & patch).flatten(1).sum(1) == PATCH_PIXELS
        reductions = reduction(kept)
        row = {"share": stats.share(reductions, full_reduction, resamples=config.resamples, seed=config.seed).as_dict(),
               "holds_patch": int(holds_patch.sum())}  # fmt: skip
        for label, subset in (("with_patch", holds_patch.numpy()), ("without_patch", ~holds_patch.numpy())):
            if subset.sum() >= 3:
                row[label] = stats.share(reductions[subset], full_reduction[subset], resamples=config.resamples, seed=config.seed).as_dict()
        inner[name] = row
        log(f"shortcut: {name}: patch AUROC {per_method[name]['auroc']['value']:.3f}, step share {row['share']['value']:.3f}")

    # 4. positive controls: the class through the mask's shape
    controls = mask_leak(model, train_split, order[config.train_images :], mean, std, config, log)
    return {
        "config": asdict(config),
        "reliance": reliance,
        "maps": per_method,
        "inner_step": inner,
        "controls": controls,
        "claims": claims(reliance, auroc, controls, config),
        "chance": {"mass": PATCH_PIXELS / 784, "top": PATCH_PIXELS / 784, "auroc": 0.5, "class": 0.1},
        "seconds": time.perf_counter() - started,
    }


MARGIN = 0.02  # accuracy or AUROC: no practical difference


def claims(reliance: dict, auroc: dict[str, np.ndarray], controls: dict, config: ShortcutConfig) -> list[dict]:
    """The ground-truth claims with computed verdicts (the rule of :func:`normgrad.evaluation.training.stats.verdict`)."""
    from normgrad.evaluation.faithfulness.summary import compare

    out = []
    n = reliance["test_images"]
    drop = reliance["clean"] - reliance["other_patch"]
    half = 1.96 * ((reliance["clean"] * (1 - reliance["clean"]) + reliance["other_patch"] * (1 - reliance["other_patch"])) / n) ** 0.5
    interval = stats.Interval(drop, drop - half, drop + half)  # two accuracies on the same images: conservative (unpaired) width
    out.append({"claim": "The CNN relies on the patch: another class's patch lowers its accuracy", "difference": interval.as_dict(),
                "direction": 1})  # fmt: skip
    for name, values in auroc.items():
        entry = stats.mean_interval(values - 0.5, resamples=config.resamples, seed=config.seed)
        out.append({"claim": f"{name}'s map ranks the patch above the other pixels (AUROC − 0.5 > 0)", "difference": entry.as_dict(),
                    "direction": 1})  # fmt: skip
    for a, b, direction, text in (
        ("meta", "normgrad", 1, "Meta-saliency finds the patch better than NormGrad (AUROC)"),
        ("meta:selective", "selective", 1, "meta:selective finds the patch better than selective (AUROC)"),
        ("adversarial", "meta", -1, "The adversarial map finds the patch less than meta-saliency (AUROC)"),
        ("normgrad", "gradcam", 1, "NormGrad finds the patch better than Grad-CAM (AUROC)"),
        ("default", "normgrad", 1, "The explain default finds the patch better than NormGrad (AUROC)"),
    ):
        if a in auroc and b in auroc:
            comparison = compare(auroc[a], auroc[b], config.resamples, config.seed)
            row = {"claim": text, "difference": comparison["difference"], "wilcoxon_p": comparison["wilcoxon_p"]}
            out.append({**row, "direction": direction})
    chance = controls["other_image"]
    for name, text, leaks in (
        ("mask_alone", "The class leaks through the mask alone (accuracy above the unmasked other image's)", True),
        ("mean_fill", "Under ROAR's mean fill the class leaks through the mask", True),
        ("road_fill", "With ROAD imputation the class does not leak (accuracy no higher than the unmasked other image's)", False),
        ("road_fill_noise_free", "With ROAD's imputation but no noise the class does not leak", False),
    ):
        if name not in controls:
            continue
        d = controls[name]["accuracy"] - chance["accuracy"]
        half = 1.96 * sum(c["accuracy"] * (1 - c["accuracy"]) / c["test_images"] for c in (controls[name], chance)) ** 0.5
        interval = stats.Interval(d, d - half, d + half)
        out.append({"claim": text, "difference": interval.as_dict(), "direction": 1 if leaks else 0})
    return with_verdicts(out)


def with_verdicts(claims: list[dict]) -> list[dict]:
    """Each claim's verdict from its interval and ``direction`` (+1 / −1: the sign claimed; 0: "no difference beyond
    +MARGIN", supported when the whole interval lies below it)."""
    from normgrad.evaluation.faithfulness.summary import verdict

    out = []
    for claim in claims:
        interval = stats.Interval(**claim["difference"])
        if claim["direction"] == 0:
            result = "supported" if interval.high < MARGIN else "not supported" if interval.low > MARGIN else "inconclusive"
        else:
            result = verdict(interval, claim["direction"], MARGIN)
        out.append({**claim, "verdict": result})
    return out


def markdown(document: dict[str, Any]) -> str:
    """The shortcut study as a section of faithfulness.md."""
    c, r = document["config"], document["reliance"]

    def cell(entry: dict) -> str:
        return f"{entry['value']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"

    lines = [
        "## Ground truth: a planted shortcut",
        "",
        f"A FashionCNN trained ({c['epochs']} epoch(s), no flips) on {c['train_images']} Fashion-MNIST training images, "
        f"{c['share']:.0%} of them carrying a 4 × 4 white patch whose *{c['kind']}* tells the label "
        "(`normgrad.evaluation.shortcut`). Test accuracy on the 10 000 test images: "
        f"clean {r['clean']:.3f}; with the true class's patch {r['true_patch']:.3f}; with another class's patch "
        f"{r['other_patch']:.3f} (it then predicts the patch's class for {r['follows_other_patch']:.1%} of them).",
        "",
        "| claim | difference [95 % CI] | verdict |",
        "|---|---|---|",
    ]
    for claim in document["claims"]:
        d = claim["difference"]
        lines.append(f"| {claim['claim']} | {d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | **{claim['verdict']}** |")
    lines += [
        "",
        f"Where each map looks, on {c['eval_images']} test images carrying their class's patch (target = the label; chance: "
        f"mass and top-16 {document['chance']['mass']:.3f}, AUROC 0.5); and the inner step (lr {c['lr']}) on the top "
        f"{c['keep']:.0%} pixels (rest: the dataset mean): its loss reduction on the whole image over the whole image's step "
        "(Σ δ / Σ Δ), for all images and split by whether the kept pixels hold the whole patch. The step on the patch's 16 "
        f"pixels alone: share {cell(document['inner_step']['patch_only'])}.",
        "",
        "| method | patch mass | top-16 on patch | AUROC | step share (all) | kept pixels hold the patch | share (they do) "
        "| share (they do not) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in document["maps"].items():
        step = document["inner_step"][name]
        with_patch = cell(step["with_patch"]) if "with_patch" in step else "—"
        without = cell(step["without_patch"]) if "without_patch" in step else "—"
        lines.append(
            f"| {name} | {cell(row['mass'])} | {cell(row['top'])} | {cell(row['auroc'])} | {cell(step['share'])} | "
            f"{step['holds_patch']} / {c['eval_images']} | {with_patch} | {without} |"
        )
    lines += [
        "",
        f"Positive controls (Rong et al. 2022): the mask of image *i* (its top {c['control_keep']:.0%} NormGrad pixels) applied to "
        f"another, randomly drawn image; a fresh CNN learns image *i*'s class from it ({c['control_train']} training, "
        f"{c['control_test']} test images; 95 % normal intervals).",
        "",
        "| what the classifier sees | test accuracy [95 % CI] |",
        "|---|---:|",
    ]
    titles = {"mask_alone": "the mask alone", "mean_fill": "the other image, mask pixels = dataset mean (ROAR)",
              "road_fill": "the other image, mask pixels imputed (ROAD, noise σ = 0.01)",
              "road_fill_noise_free": "the other image, mask pixels imputed without noise",
              "other_image": "the other image, untouched (chance)"}  # fmt: skip
    for name, title in titles.items():
        if name not in document["controls"]:
            continue
        entry = document["controls"][name]
        lines.append(f"| {title} | {entry['accuracy']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}] |")
    return "\n".join(lines) + "\n"


def _final_map(name: str, model: Any, x: Tensor, y: Tensor, seed: int, first_index: int) -> Tensor:
    maps, _ = method_maps(name, model, x, y, list(LAYERS), DEFAULT_METHODS, per_layer=False, seed=seed, first_index=first_index)
    return maps[Subject(name)]


def mask_leak(model: Any, split: Any, pool: Tensor, mean: float, std: float, config: ShortcutConfig, log: Callable[[str], None]) -> dict:
    """Test accuracy of fresh CNNs that see only a mask's trace on another image (see the module docstring, 4)."""
    from normgrad.evaluation.training.cnn import TrainConfig, accuracy, normalise, train
    from normgrad.evaluation.training.masking import tie_breaker, top_mask
    from normgrad.registry import get_method

    count = config.control_train + config.control_test
    if len(pool) < count:
        raise NormGradError(f"the mask-leak control needs {count} training images outside the shortcut model's; {len(pool)} left")
    index = pool[:count]
    images, labels = split.images[index], split.labels[index]
    x = normalise(images, mean, std)
    normgrad = get_method("normgrad")
    maps = torch.cat([_combined(normgrad, model, x[i : i + 256], labels[i : i + 256]) for i in range(0, count, 256)])
    masks = top_mask(maps, config.control_keep, tie_breaker(count, 28, 28, config.seed))
    generator = torch.Generator().manual_seed(config.seed + 7)
    base = images[torch.randperm(count, generator=generator)].double()[:, None] / 255  # another image: its class is not labels[i]
    pixel_mean = float(images.double().mean() / 255)
    mean_fill = torch.where(masks, torch.full_like(base, pixel_mean), base)
    log(f"controls: ROAD imputation of {count} images")
    road_fill = impute_seeded(base, masks, [[config.seed, i, 11] for i in range(count)])
    noise_free = impute_seeded(base, masks, [[config.seed, i, 11] for i in range(count)], noise=0.0)
    variants = {
        "mask_alone": masks.double(),
        "mean_fill": mean_fill,
        "road_fill": road_fill,
        "road_fill_noise_free": noise_free,
        "other_image": base,
    }
    train_config = TrainConfig(epochs=config.control_epochs, width=8, flip=False)
    out = {}
    for name, pixels in variants.items():
        inputs = ((pixels - pixels.mean()) / pixels.std().clamp_min(1e-6)).float()
        trained = train(inputs[: config.control_train], labels[: config.control_train], train_config, config.seed)
        acc = accuracy(trained, inputs[config.control_train :], labels[config.control_train :])
        half = 1.96 * (acc * (1 - acc) / config.control_test) ** 0.5
        out[name] = {"accuracy": acc, "low": acc - half, "high": acc + half, "test_images": config.control_test}
        log(f"controls: {name}: accuracy {acc:.3f}")
    return out


def _combined(method: Any, model: Any, x: Tensor, y: Tensor) -> Tensor:
    import normgrad as ng

    raw = method(model, x, y, layers=list(LAYERS))
    return ng.combine({k: v.detach().float() for k, v in raw.items()}, size=(28, 28))
