"""From raw per-image reductions and retraining runs to intervals, paired tests and verdicts (the JSON).

Every claim is tested at one *primary* setting fixed before looking at the
data (k = 10 %, dataset-mean fill, the paper's lr 0.0025, the measured loss
change of the unmasked image); ``robustness`` counts, over the other
fractions and fills at the same lr, how often the paired interval lies on
the claimed side and on the opposite side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from normgrad.evaluation.training import stats
from normgrad.evaluation.training.per_image import PAPER_LR, PerImageResult
from normgrad.evaluation.training.roar import RoarResult

PRIMARY_FRACTION = 0.10
PRIMARY_FILL = "mean"
SHARE_MARGIN = 0.02  # differences of shares inside ±0.02 count as "no practical difference"
ACCURACY_MARGIN = 0.005  # half an accuracy point for ROAR/KAR
PAIRS = (
    ("meta", "normgrad"),
    ("meta:selective", "selective"),
    ("meta", "random"),
    ("normgrad", "random"),
    ("adversarial", "random"),
    ("adversarial", "meta"),
)


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, as a signed paired difference ``a − b`` in one regime and measure."""

    text: str
    a: str
    b: str
    direction: int
    regime: str = "fashion-mnist"
    measure: str = "self"
    lr: float = PAPER_LR


PER_IMAGE_CLAIMS = (
    Claim("Meta-saliency's top pixels carry more of the image's training signal than NormGrad's", "meta", "normgrad", 1),
    Claim("... and more than selective NormGrad's, for meta:selective", "meta:selective", "selective", 1),
    Claim("Meta-saliency's top pixels carry more training signal than random pixels", "meta", "random", 1),
    Claim("The adversarial map's top pixels carry less training signal than random pixels", "adversarial", "random", -1),
    Claim("The adversarial map's top pixels carry less training signal than meta-saliency's", "adversarial", "meta", -1),
    Claim("Meta's pixels help held-out images of the same class more than NormGrad's", "meta", "normgrad", 1, measure="class"),
    Claim("Meta vs NormGrad at lr 1e-4", "meta", "normgrad", 1, lr=1e-4),
    Claim("Meta vs NormGrad at lr 1e-2", "meta", "normgrad", 1, lr=1e-2),
    Claim("Meta vs NormGrad on ImageNet photos (EfficientNet-Lite0)", "meta", "normgrad", 1, regime="imagenet"),
    Claim("Adversarial vs random on ImageNet photos (EfficientNet-Lite0)", "adversarial", "random", -1, regime="imagenet"),
)


def _arrays(result: PerImageResult, measure: str, kind: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(masked [lr, method, fill, fraction, image], full [lr, image]) reductions for a measure and kind."""
    prefix = "first_" if kind == "first_order" else ""
    masked, full = getattr(result, f"{prefix}masked_{measure}"), getattr(result, f"{prefix}full_{measure}")
    if masked is None:
        return None
    if kind == "first_order":  # lr-free: ⟨∇L, G⟩ per image, the same for every lr
        full = np.broadcast_to(full, (len(result.lrs), len(full)))
    return masked, full


def per_image_summary(result: PerImageResult, *, resamples: int = 2000) -> dict[str, Any]:
    """Shares with intervals for every setting, and paired comparisons (measured and first order)."""
    shares, comparisons = [], []
    measures = ["self"] + (["class"] if result.masked_class is not None else [])
    for measure in measures:
        for kind in ("measured", "first_order"):
            masked, full = _arrays(result, measure, kind)  # type: ignore[misc]
            for li, lr in enumerate(result.lrs):
                if np.isnan(full[li]).all():  # not measured at this lr
                    continue
                for fi, fill in enumerate(result.fills):
                    for ki, fraction in enumerate(result.fractions):
                        setting = {"measure": measure, "kind": kind, "lr": lr, "fill": fill, "fraction": fraction}
                        for mi, method in enumerate(result.methods):
                            value = stats.share(masked[li, mi, fi, ki], full[li], resamples=resamples)
                            shares.append({**setting, "method": method, **value.as_dict()})
                        for a, b in PAIRS:
                            if a in result.methods and b in result.methods:
                                ai, bi = result.methods.index(a), result.methods.index(b)
                                test = stats.paired(masked[li, ai, fi, ki], masked[li, bi, fi, ki], full[li], resamples=resamples)
                                comparisons.append({**setting, "a": a, "b": b, **test.as_dict()})
    full_self = result.full_self
    return {
        "regime": result.regime,
        "description": result.description,
        "n": int(len(result.labels)),
        "methods": result.methods,
        "fills": result.fills,
        "fractions": result.fractions,
        "lrs": result.lrs,
        "seconds": result.seconds,
        "mean_loss": float(result.loss_before.mean()),
        "full_step_reduction": {str(lr): float(full_self[li].sum() / len(full_self[li])) for li, lr in enumerate(result.lrs)},
        "full_step_helps": {str(lr): float((full_self[li] > 0).mean()) for li, lr in enumerate(result.lrs)},
        "shares": shares,
        "comparisons": comparisons,
    }


def roar_summary(result: RoarResult) -> dict[str, Any]:
    """Accuracy vs fraction per method and mode (seed intervals), and paired differences of the mean over fractions."""
    accuracy = result.accuracy()  # [method, mode, fraction, seed]
    tests = len(result.reference[0])
    rows = []
    for mi, method in enumerate(result.methods):
        for di, mode in enumerate(result.modes):
            for ki, fraction in enumerate(result.fractions):
                per_seed = accuracy[mi, di, ki]
                p = float(per_seed.mean())
                interval = stats.seed_interval(per_seed, p * (1 - p) / tests)
                rows.append({"method": method, "mode": mode, "fraction": fraction, "per_seed": per_seed.tolist(), **interval.as_dict()})
    reference_per_seed = result.reference.mean(-1)
    p = float(reference_per_seed.mean())
    reference = {"per_seed": reference_per_seed.tolist(), **stats.seed_interval(reference_per_seed, p * (1 - p) / tests).as_dict()}
    comparisons = []
    for a, b in PAIRS:
        if a not in result.methods or b not in result.methods:
            continue
        ai, bi = result.methods.index(a), result.methods.index(b)
        for di, mode in enumerate(result.modes):
            # per test image and seed: correct_a − correct_b, averaged over fractions (the area under the curve)
            difference = result.correct[ai, di].astype(float).mean(0) - result.correct[bi, di].astype(float).mean(0)  # [seed, image]
            per_seed = difference.mean(-1)
            per_image = difference.mean(0)
            interval = stats.seed_interval(per_seed, float(per_image.var(ddof=1)) / len(per_image))  # + test-set sampling
            comparisons.append({"a": a, "b": b, "mode": mode, "per_seed": per_seed.tolist(), **interval.as_dict()})
    return {
        "methods": result.methods,
        "modes": result.modes,
        "fractions": result.fractions,
        "seeds": result.seeds,
        "train_images": result.train_images,
        "test_images": result.test_images,
        "epochs": result.config.epochs,
        "seconds": result.seconds,
        "retrain_seconds_mean": float(result.retrain_seconds.mean()),
        "map_seconds": result.map_seconds,
        "accuracy": rows,
        "reference": reference,
        "comparisons": comparisons,
    }


def claims(per_image: dict[str, dict[str, Any]], roar: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The computed verdicts, one per claim the data of this run can test."""
    out = []
    for claim in PER_IMAGE_CLAIMS:
        summary = per_image.get(claim.regime)
        if summary is None or claim.a not in summary["methods"] or claim.b not in summary["methods"]:
            continue
        lr = min(summary["lrs"], key=lambda value: abs(value - claim.lr))
        if abs(lr - claim.lr) > 1e-12 or claim.measure == "class" and not any(c["measure"] == "class" for c in summary["comparisons"]):
            continue
        rows = [
            c
            for c in summary["comparisons"]
            if (c["a"], c["b"], c["measure"], c["kind"], c["lr"]) == (claim.a, claim.b, claim.measure, "measured", lr)
        ]
        primary = [r for r in rows if r["fill"] == PRIMARY_FILL and abs(r["fraction"] - PRIMARY_FRACTION) < 1e-9]
        if not primary:
            continue
        row = primary[0]
        interval = stats.Interval(**row["difference"])
        out.append(
            {
                "claim": claim.text,
                "test": f"{claim.a} − {claim.b}, {'>' if claim.direction > 0 else '<'} 0",
                "regime": claim.regime,
                "measure": claim.measure,
                "setting": f"k = {PRIMARY_FRACTION:.0%}, {PRIMARY_FILL} fill, lr {lr:g}",
                "n": row["n"],
                "difference": row["difference"],
                "wilcoxon_p": row["wilcoxon_p"],
                "cohen_dz": row["cohen_dz"],
                "verdict": stats.verdict(interval, claim.direction, SHARE_MARGIN),
                "robustness": _robustness(rows, claim.direction),
            }
        )
    if roar:
        for a, b, mode, direction, text in (
            ("meta", "normgrad", "roar", -1, "ROAR: removing meta's top pixels hurts retraining more than removing NormGrad's"),
            ("meta", "normgrad", "kar", 1, "KAR: keeping only meta's top pixels keeps more accuracy than NormGrad's"),
            ("meta:selective", "selective", "roar", -1, "ROAR: meta:selective hurts retraining more than selective"),
            ("meta:selective", "selective", "kar", 1, "KAR: meta:selective keeps more than selective"),
            ("meta", "random", "roar", -1, "ROAR: removing meta's top pixels hurts more than removing random pixels"),
            ("meta", "random", "kar", 1, "KAR: keeping meta's top pixels keeps more than random pixels"),
        ):
            found = [c for c in roar["comparisons"] if (c["a"], c["b"], c["mode"]) == (a, b, mode)]
            if not found:
                continue
            row = found[0]
            interval = stats.Interval(row["value"], row["low"], row["high"])
            out.append(
                {
                    "claim": text,
                    "test": f"accuracy({a}) − accuracy({b}), {'>' if direction > 0 else '<'} 0",
                    "regime": "fashion-mnist retrained",
                    "measure": mode,
                    "setting": f"mean over k = {', '.join(f'{f:.0%}' for f in roar['fractions'])}; {len(roar['seeds'])} seeds",
                    "n": roar["test_images"],
                    "difference": interval.as_dict(),
                    "wilcoxon_p": None,
                    "cohen_dz": None,
                    "verdict": stats.verdict(interval, direction, ACCURACY_MARGIN),
                    "robustness": None,
                }
            )
    return out


def _robustness(rows: list[dict[str, Any]], direction: int) -> dict[str, int]:
    """Over every fraction and fill: settings whose interval lies on the claimed side, on the other side, or spans 0."""
    counts = {"settings": len(rows), "claimed_side": 0, "opposite_side": 0}
    for row in rows:
        low, high = row["difference"]["low"], row["difference"]["high"]
        if direction * low > 0 and direction * high > 0:
            counts["claimed_side"] += 1
        elif direction * low < 0 and direction * high < 0:
            counts["opposite_side"] += 1
    return counts
