"""The statistics of the study: bootstrap intervals, paired tests, effect sizes, verdicts (scipy).

=========================  ==========================================================================
quantity                   definition
=========================  ==========================================================================
share                      ``Σ_i δ_i / Σ_i Δ_i``: the masked steps' summed loss reduction over the
                           full steps' (a ratio of sums: what training, which adds the steps, keeps)
interval                   95 % bootstrap (BCa, images resampled with their pairs) of the statistic;
                           under 20 images: ``± t_{n−1} · SE_jackknife`` (the bootstrap under-covers)
paired difference          ``(Σ_i a_i − Σ_i b_i) / Σ_i Δ_i`` for two methods on the same images
Wilcoxon p                 two-sided signed-rank test of the per-image differences ``a_i − b_i``
Cohen's d_z                ``mean(a − b) / sd(a − b)``
rank-biserial r            ``(R⁺ − R⁻) / (R⁺ + R⁻)``, signed ranks of ``|a − b|`` (zeros dropped)
seed interval              ``mean ± t_{S−1} · sqrt(s²/S + v_test)``: S training seeds, v_test the
                           test-set sampling variance of the mean (binomial or bootstrap)
verdict                    *supported* when the interval lies on the claimed side of 0; *not supported*
                           when it lies on the other side, or inside ``±margin`` (no practical
                           difference); *inconclusive* otherwise
=========================  ==========================================================================
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from normgrad.errors import NormGradError

CONFIDENCE = 0.95
SMALL_SAMPLE = 20  # below this many images: jackknife standard error with t_{n−1} instead of the bootstrap


@dataclass(frozen=True)
class Interval:
    """A statistic with its confidence interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of two methods on the same images."""

    difference: Interval
    wilcoxon_p: float
    cohen_dz: float
    rank_biserial: float
    n: int

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "difference": self.difference.as_dict()}


def bootstrap(
    statistic: Callable[..., np.ndarray], *samples: np.ndarray, resamples: int = 2000, seed: int = 0, confidence: float = CONFIDENCE
) -> Interval:
    """``statistic(*samples)`` with its paired BCa bootstrap interval (percentile when BCa is undefined)."""
    from scipy.stats import bootstrap as scipy_bootstrap

    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    if not arrays or len({len(a) for a in arrays}) != 1 or len(arrays[0]) == 0:
        raise NormGradError(f"bootstrap needs non-empty paired samples of equal length; got lengths {[len(a) for a in arrays]}")
    value = float(statistic(*arrays, axis=-1))
    n = len(arrays[0])
    if n < 3:  # no interval from one or two observations
        return Interval(value, math.nan, math.nan)
    if n < SMALL_SAMPLE:
        return _jackknife(statistic, arrays, value, confidence)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate data: scipy warns and returns nan, handled below
            result = scipy_bootstrap(
                tuple(arrays),
                statistic,
                paired=True,
                vectorized=True,
                n_resamples=resamples,
                confidence_level=confidence,
                method=method,
                rng=np.random.default_rng(seed),
            )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return Interval(value, low, high)
    return Interval(value, value, value) if math.isfinite(value) else Interval(value, math.nan, math.nan)


def _jackknife(statistic: Callable[..., np.ndarray], arrays: list[np.ndarray], value: float, confidence: float) -> Interval:
    """``value ± t_{n−1} · SE_jackknife`` (few samples: a bootstrap interval would be too narrow)."""
    from scipy.stats import t

    n = len(arrays[0])
    leave_one_out = np.array([float(statistic(*[np.delete(a, i) for a in arrays], axis=-1)) for i in range(n)])
    standard_error = math.sqrt((n - 1) / n * float(((leave_one_out - leave_one_out.mean()) ** 2).sum()))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * standard_error
    return Interval(value, value - half, value + half)


def _ratio_of_sums(numerator: np.ndarray, denominator: np.ndarray, axis: int = -1) -> np.ndarray:
    return numerator.sum(axis) / denominator.sum(axis)


def _difference_of_sums(a: np.ndarray, b: np.ndarray, denominator: np.ndarray, axis: int = -1) -> np.ndarray:
    return (a.sum(axis) - b.sum(axis)) / denominator.sum(axis)


def _mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return values.mean(axis)


def mean_interval(values: np.ndarray, **options: object) -> Interval:
    """The mean with its bootstrap interval."""
    return bootstrap(_mean, np.asarray(values), **options)  # type: ignore[arg-type]


def share(reductions: np.ndarray, full_reductions: np.ndarray, **options: object) -> Interval:
    """``Σ δ / Σ Δ`` with its paired bootstrap interval."""
    return bootstrap(_ratio_of_sums, reductions, full_reductions, **options)  # type: ignore[arg-type]


def paired(a: np.ndarray, b: np.ndarray, full_reductions: np.ndarray, **options: object) -> Comparison:
    """Compare method ``a`` with ``b`` on the same images: difference of shares, Wilcoxon, d_z, rank-biserial."""
    from scipy.stats import rankdata, wilcoxon

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    difference = bootstrap(_difference_of_sums, a, b, full_reductions, **options)  # type: ignore[arg-type]
    d = a - b
    nonzero = d[d != 0]
    if len(nonzero) == 0:
        return Comparison(difference, 1.0, 0.0, 0.0, len(d))
    p = float(wilcoxon(nonzero).pvalue) if len(nonzero) > 1 else 1.0
    spread = float(d.std(ddof=1)) if len(d) > 1 else math.nan
    dz = float(d.mean() / spread) if spread > 0 else math.copysign(math.inf, d.mean()) if spread == 0 else math.nan
    ranks = rankdata(np.abs(nonzero))
    r = float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / ranks.sum())
    return Comparison(difference, p, dz, r, len(d))


def seed_interval(per_seed: np.ndarray, test_variance: float = 0.0, confidence: float = CONFIDENCE) -> Interval:
    """Mean over training seeds with ``t_{S−1}·sqrt(s²/S + v_test)``; one seed: the test-set part alone (normal)."""
    from scipy.stats import norm, t

    values = np.asarray(per_seed, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise NormGradError(f"seed_interval needs one value per seed; got shape {values.shape}")
    mean = float(values.mean())
    if len(values) == 1:
        half = float(norm.ppf(0.5 + confidence / 2)) * math.sqrt(test_variance)
    else:
        half = float(t.ppf(0.5 + confidence / 2, len(values) - 1)) * math.sqrt(values.var(ddof=1) / len(values) + test_variance)
    return Interval(mean, mean - half, mean + half)


def verdict(interval: Interval, direction: int, margin: float) -> str:
    """``supported`` / ``not supported`` / ``inconclusive`` for the claim "the difference has the sign of ``direction``"."""
    if direction not in (1, -1):
        raise NormGradError(f"direction must be +1 or -1; got {direction}")
    low, high = (interval.low, interval.high) if direction == 1 else (-interval.high, -interval.low)
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if low > 0:
        return "supported"
    if high < 0 or (-margin < low and high < margin):
        return "not supported"
    return "inconclusive"
