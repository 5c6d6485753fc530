"""Per-image faithfulness values → means with intervals, paired comparisons, and claims with computed verdicts.

A claim "``a`` is more faithful than ``b``" is tested on each metric as the
paired per-image difference ``a − b`` (its sign turned for metrics where
lower is better), with a 95 % bootstrap interval over images
(:func:`normgrad.evaluation.training.stats.mean_interval`) and a two-sided
Wilcoxon signed-rank p.  Verdict (:func:`~normgrad.evaluation.training.stats.verdict`):
*supported* when the interval lies on the claimed side of 0; *not
supported* when it lies on the other side, or inside ±:data:`MARGIN`
(no practical difference, in probability units); *inconclusive* otherwise.
An interval that lies wholly inside ±:data:`MARGIN` is *not supported* even
when it excludes 0 (a difference too small to matter is not "more
faithful"). The headline verdict is ROAD's combined score (:data:`PRIMARY`);
the other metrics' verdicts stand beside it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from normgrad.evaluation.faithfulness.anchors import ANCHORS
from normgrad.evaluation.faithfulness.scoring import HIGHER_IS_BETTER, METRICS
from normgrad.evaluation.training import stats

PRIMARY = "road_combined"
MARGIN = 0.01

# (id, claim, a, b, direction: +1 "a more faithful than b", -1 "a less faithful")
CLAIMS: tuple[tuple[str, str, str, str, int], ...] = (
    ("default-random", "The explain default is more faithful than a random map", "default", "random", 1),
    *((f"default-{a.lower()}", f"The explain default is more faithful than pytorch-grad-cam's {a}", "default", a, 1) for a in ANCHORS),
    ("normgrad-random", "NormGrad is more faithful than a random map", "normgrad", "random", 1),
    ("normgrad-gradcam", "NormGrad is more faithful than Grad-CAM (Captum)", "normgrad", "gradcam", 1),
    ("meta-normgrad", "Meta-saliency is more faithful than NormGrad", "meta", "normgrad", 1),
    ("metaselective-selective", "meta:selective is more faithful than selective NormGrad", "meta:selective", "selective", 1),
    ("adversarial-meta", "The adversarial map is less faithful than meta-saliency", "adversarial", "meta", -1),
)


def verdict(interval: stats.Interval, direction: int, margin: float = MARGIN) -> str:
    """:func:`normgrad.evaluation.training.stats.verdict`, except that an interval wholly inside ±margin is *not supported*."""
    if math.isfinite(interval.low) and math.isfinite(interval.high) and -margin < interval.low and interval.high < margin:
        return "not supported"
    return stats.verdict(interval, direction, margin)


def compare(a: np.ndarray, b: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    """Mean of ``a − b`` with its interval, Wilcoxon p, n."""
    from scipy.stats import wilcoxon

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    interval = stats.mean_interval(d, resamples=resamples, seed=seed)
    nonzero = d[d != 0]
    p = float(wilcoxon(nonzero).pvalue) if len(nonzero) > 1 else 1.0
    return {"difference": interval.as_dict(), "wilcoxon_p": p, "n": len(d)}


def summarise(results: dict[str, dict], regimes: dict[str, dict], *, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The JSON document: per regime, every subject's means; the claims with verdicts."""
    document: dict[str, Any] = {"regimes": regimes, "metrics": {m: ("higher" if HIGHER_IS_BETTER[m] else "lower") for m in METRICS}}
    tables: dict[str, Any] = {}
    for regime, result in results.items():
        rows = {}
        for subject, metrics in result["values"].items():
            rows[subject.label] = {
                "method": subject.method,
                "layer": subject.layer,
                **{m: stats.mean_interval(v, resamples=resamples, seed=seed).as_dict() for m, v in metrics.items()},
            }
        tables[regime] = {"subjects": rows, "seconds_per_image": result["seconds_per_image"]}
    document["tables"] = tables
    claims = []
    for claim_id, text, a, b, direction in CLAIMS:
        for regime, result in results.items():
            values = {s.label: v for s, v in result["values"].items()}
            if a not in values or b not in values:
                continue
            row: dict[str, Any] = {"id": claim_id, "claim": text, "regime": regime, "a": a, "b": b, "direction": direction, "metrics": {}}
            for metric in values[a]:
                if metric not in values[b]:
                    continue
                comparison = compare(values[a][metric], values[b][metric], resamples, seed)
                sign = direction * (1 if HIGHER_IS_BETTER[metric] else -1)
                comparison["verdict"] = verdict(stats.Interval(**comparison["difference"]), sign, MARGIN)
                row["metrics"][metric] = comparison
            row["verdict"] = row["metrics"].get(PRIMARY, {}).get("verdict", "inconclusive")
            claims.append(row)
    document["claims"] = claims
    return document


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
