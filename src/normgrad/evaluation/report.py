"""The evaluation report: grid pointing game, sanity check, class sensitivity, training impact.

Runs on the embedded EfficientNet-Lite0 and scikit-image's real photos (or
your own), writes ``docs/results.md`` with tables, PNG plots and the raw
records (JSON).  ``make eval`` / ``normgrad eval report``; about 8 minutes on
2 CPU cores.  The checks of the paper's claims are computed, not written by
hand: if a regenerated number contradicts a claim, the report says so.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from normgrad.evaluation.common import methods as study_methods
from normgrad.evaluation.grid import grid_pointing
from normgrad.evaluation.photos import confident, load_photos
from normgrad.evaluation.sanity import cascading_randomisation
from normgrad.evaluation.sensitivity import class_sensitivity
from normgrad.evaluation.training_impact import training_impact
from normgrad.models import LoadedModel, load


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values) if values else float("nan")


def _group(records: list[dict], keys: tuple[str, ...], value: str) -> dict[tuple, float]:
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(float(r[value]))
    return {k: _mean(v) for k, v in groups.items()}


def _fast_ig(method_list: list) -> list:
    """The report's integrated gradients take 16 steps (the library default is 32) to fit its time budget."""
    out = []
    for m in method_list:
        if m.name == "integrated_gradients":
            m = replace(m, function=partial(m.function, n_steps=16))
        out.append(m)
    return out


def _plot(path: Path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str, xticks: list | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label, linewidth=2.2 if "normgrad" in label or "meta" in label else 1.2)
    if xticks:
        ax.set_xticks(range(len(xticks)))
        ax.set_xticklabels(xticks, rotation=60, ha="right", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_report(
    out: Path = Path("docs"),
    loaded: LoadedModel | None = None,
    photos: dict[str, Any] | None = None,
    *,
    grids: int = 5,
    sanity_photos: int = 2,
    impact_photos: int = 4,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the four studies and write ``out/results.md``, ``out/results.json`` and the plots."""
    started = time.time()
    torch.manual_seed(0)
    loaded = loaded or load()
    photos = photos or load_photos()
    chosen = confident(loaded, photos)
    confident_photos = {name: photo for name, (photo, _, _) in chosen.items()}
    methods = _fast_ig(study_methods())
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    log(f"grid pointing game: {grids} grids of {', '.join(chosen)}")
    t = time.time()
    grid = grid_pointing(loaded, photos, methods, max_grids=grids)
    timings["grid"] = time.time() - t
    log(f"sanity check: {sanity_photos} photos")
    t = time.time()
    sanity_methods = [m for m in methods if m.name not in ("meta:selective", "center", "random")]
    sanity = cascading_randomisation(loaded, dict(list(confident_photos.items())[:sanity_photos]), sanity_methods)
    timings["sanity"] = time.time() - t
    log("class sensitivity")
    t = time.time()
    sensitivity = class_sensitivity(loaded, confident_photos, methods)
    timings["sensitivity"] = time.time() - t
    log(f"training impact: {impact_photos} photos")
    t = time.time()
    impact = training_impact(loaded, dict(list(confident_photos.items())[:impact_photos]), methods)
    timings["impact"] = time.time() - t

    records = {"grid": grid, "sanity": sanity, "sensitivity": sensitivity, "impact": impact, "timings_s": timings}
    (out / "results.json").write_text(json.dumps(records, indent=1))
    text, headline = _markdown(loaded, chosen, records, out)
    (out / "results.md").write_text(text)
    log(f"wrote {out / 'results.md'} in {time.time() - started:.0f} s")
    return headline


@dataclass
class Section:
    """One study in the report: its markdown lines, the computed checks, and its headline numbers."""

    lines: list[str]
    checks: list[str] = field(default_factory=list)
    headline: dict[str, Any] = field(default_factory=dict)


def _markdown(loaded: LoadedModel, chosen: dict, records: dict, out: Path) -> tuple[str, dict]:
    intro = [
        "# Evaluation results",
        "",
        "Model: the embedded EfficientNet-Lite0 (ImageNet). Photos (scikit-image), predicted class and probability: "
        + ", ".join(f"{n} → {loaded.class_name(c)} ({p:.0%})" for n, (_, c, p) in chosen.items())
        + ". Regenerate with `make eval` (`normgrad eval report`); raw records in `results.json`. "
        + "Time per study (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in records["timings_s"].items())
        + ". Integrated gradients use 16 steps here. `combined` is the product of the normalised maps of "
        + f"the default layers {loaded.default_layers()}.",
        "",
    ]
    sections = [
        grid_section(records["grid"]),
        sanity_section(records["sanity"], out),
        sensitivity_section(records["sensitivity"]),
        impact_section(records["impact"], out),
    ]
    checks = [c for section in sections for c in section.checks] + _guided_backprop_note(records["sensitivity"])
    lines = [*intro, "## What the numbers say (computed)", "", *[f"- {c}" for c in checks], ""]
    for section in sections:
        lines += section.lines
    chosen_default = out / "choosing-the-default.md"  # the grid benchmark's decision (normgrad.defaults), kept across reruns
    if chosen_default.exists():
        lines += ["", chosen_default.read_text().rstrip()]
    headline = {k: v for section in sections for k, v in section.headline.items()}
    order = ["grid_share_combined", "class_sensitivity_combined", "training_cosine_at_10pct", "training_first_order_share_at_10pct"]
    headline = {**{k: headline[k] for k in order if k in headline}, **headline, "checks": checks}
    return "\n".join(lines) + "\n", headline


def _methods(records: list[dict]) -> list[str]:
    """The methods of a study, in the order the records list them."""
    return list(dict.fromkeys(r["method"] for r in records))


def _meta_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(plain, meta) pairs present in the records: ``meta`` wraps ``normgrad``, ``meta:<m>`` wraps ``<m>``."""
    pairs = []
    for name in names:
        if name == "meta" or name.startswith("meta:"):
            base = name.partition(":")[2] or "normgrad"
            if base in names:
                pairs.append((base, name))
    return pairs


def grid_section(grid: list[dict]) -> Section:
    """Grid pointing game: share of positive saliency in the right cell, argmax in it."""
    names = _methods(grid)
    share = _group(grid, ("method", "layer"), "share")
    hits = _group(grid, ("method", "layer"), "hit")
    lines = [
        "## Grid pointing game",
        "",
        f"{len({r['grid'] for r in grid})} 2×2 grids of the photos above (each cell 224², the class of the photo alone as target). "
        "Share of positive saliency inside the right cell (chance 0.25) and how often the argmax falls in it.",
        "",
        "| method | layer | share in cell | argmax in cell |",
        "|---|---|---:|---:|",
    ]
    for (method, layer), value in sorted(share.items(), key=lambda kv: (names.index(kv[0][0]), kv[0][1] != "combined", kv[0][1])):
        lines.append(f"| {method} | {layer} | {value:.3f} | {hits[(method, layer)]:.2f} |")
    combined = {m: share[(m, "combined")] for m in names if (m, "combined") in share}
    best = max(combined, key=combined.get)
    named = [f"{title} combined {combined[m]:.3f}" for m, title in (("normgrad", "NormGrad"), ("gradcam", "Grad-CAM")) if m in combined]
    check = f"Grid pointing: the best combined map by share is {best} ({combined[best]:.3f})" + (f"; {', '.join(named)}." if named else ".")
    return Section(lines, [check], {"grid_share_combined": combined})


def sanity_section(sanity: list[dict], out: Path) -> Section:
    """Cascading randomisation: ρ between the combined map after each re-initialisation step and the original."""
    rho = _group(sanity, ("method", "step"), "rho")
    rho_abs = _group(sanity, ("method", "step"), "rho_abs")
    ssim = _group(sanity, ("method", "step"), "ssim")
    steps = sorted({r["step"] for r in sanity})
    blocks = {r["step"]: r["block"] for r in sanity}
    names = _methods(sanity)
    _plot(
        out / "sanity.png",
        {m: (steps, [rho[(m, s)] for s in steps]) for m in names},
        "re-initialised down to block",
        "Spearman ρ with the original map",
        "Cascading randomisation (combined maps)",
        [blocks[s] for s in steps],
    )
    last, half = steps[-1], steps[len(steps) // 2]
    lines = [
        "",
        "## Sanity check: cascading randomisation",
        "",
        "Blocks re-initialised from the top down, cumulatively, on a copy of the model; ρ between the combined map after each "
        "step and the original one. A method that depends on the model must decorrelate. ![sanity](sanity.png)",
        "",
        "| method | ρ after the head | ρ half way | ρ, all blocks random | |ρ| (abs values) all random | SSIM all random |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in names:
        lines.append(
            f"| {m} | {rho[(m, 1)]:.3f} | {rho[(m, half)]:.3f} | {rho[(m, last)]:.3f} | {rho_abs[(m, last)]:.3f} | {ssim[(m, last)]:.3f} |"
        )
    kept_structure = [m for m in names if rho[(m, last)] > 0.5]
    check = "Sanity: with every block random, " + (
        f"{', '.join(kept_structure)} still correlate above 0.5 with the trained map "
        "(a warning sign, as Adebayo et al. found for guided backprop)."
        if kept_structure
        else "every method decorrelates below ρ = 0.5."
    )
    if "normgrad" in names:
        check += f" NormGrad ends at ρ = {rho[('normgrad', last)]:.2f}."
    return Section(lines, [check], {"sanity_rho_all_random": {m: rho[(m, last)] for m in names}})


def sensitivity_section(sensitivity: list[dict]) -> Section:
    """Class sensitivity: ρ between the maps of the most and the least probable class; meta vs plain from the records."""
    sens = _group(sensitivity, ("method", "layer"), "rho")
    names = _methods(sensitivity)
    layer_names = sorted({r["layer"] for r in sensitivity if r["layer"] != "combined"})
    lines = [
        "",
        "## Class sensitivity",
        "",
        "Spearman ρ between the maps for the most and the least probable class (mean over photos); lower is better.",
        "",
        "| method | " + " | ".join(layer_names) + " | combined |",
        "|---|" + "---:|" * (len(layer_names) + 1),
    ]
    for m in names:
        cells = [f"{sens[(m, layer)]:.3f}" if (m, layer) in sens else "" for layer in [*layer_names, "combined"]]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    checks = []
    for plain, meta in _meta_pairs(names):
        before, after = sens[(plain, "combined")], sens[(meta, "combined")]
        verdict = "lowers it, as the paper reports" if after < before else "does NOT lower it here, contrary to the paper"
        checks.append(f"Class sensitivity: meta-saliency on {plain} {verdict} (ρ {before:.3f} → {after:.3f}, combined maps).")
    return Section(lines, checks, {"class_sensitivity_combined": {m: sens[(m, "combined")] for m in names if (m, "combined") in sens}})


def _guided_backprop_note(sensitivity: list[dict]) -> list[str]:
    sens = _group(sensitivity, ("method", "layer"), "rho")
    if ("guided_backprop", "combined") in sens and sens[("guided_backprop", "combined")] == sens.get(("gradient", "combined")):
        return [
            "Guided backprop equals the plain gradient here: Captum's GuidedBackprop only changes nn.ReLU modules, and this model "
            "uses ReLU6 (normgrad warns about it)."
        ]
    return []


def impact_section(impact: list[dict], out: Path) -> Section:
    """Training impact: cosine and first-order share of the training gradient from the top-k % pixels."""
    cos = _group(impact, ("method", "layer", "fraction"), "cosine")
    kept = _group(impact, ("method", "layer", "fraction"), "kept")
    first_order = _group(impact, ("method", "layer", "fraction"), "kept_first_order")
    fractions = sorted({r["fraction"] for r in impact})
    names = _methods(impact)
    _plot(
        out / "training_impact.png",
        {m: ([f * 100 for f in fractions], [cos[(m, "combined", f)] for f in fractions]) for m in names},
        "pixels kept (%)",
        "cosine(G_k, G)",
        "Training gradient from the top-k % pixels (combined maps)",
    )
    lines = [
        "",
        "## Training impact",
        "",
        "Keep the top-k % pixels by a map (the rest: a blurred copy), take the training gradient G_k = ∇θ CE on that image; "
        "cosine with the full image's gradient G; the share of the full step's loss reduction that the masked step keeps to "
        "first order, G·G_k/‖G‖² (*kept¹*); and the same share measured with an actual SGD step of lr 0.0025 on the full image "
        "(*kept*; noisy: the full step's reduction is small and not linear). ![training impact](training_impact.png)",
        "",
        "| method | layer | "
        + " | ".join(f"cos @{f:.0%}" for f in fractions)
        + " | "
        + " | ".join(f"kept¹ @{f:.0%}" for f in fractions)
        + " | "
        + " | ".join(f"kept @{f:.0%}" for f in fractions)
        + " |",
        "|---|---|" + "---:|" * (3 * len(fractions)),
    ]
    for method, layer in sorted({(r["method"], r["layer"]) for r in impact}, key=lambda k: (names.index(k[0]), k[1] != "combined", k[1])):
        lines.append(
            f"| {method} | {layer} | "
            + " | ".join(f"{cos[(method, layer, f)]:.3f}" for f in fractions)
            + " | "
            + " | ".join(f"{first_order[(method, layer, f)]:.3f}" for f in fractions)
            + " | "
            + " | ".join(f"{kept[(method, layer, f)]:.2f}" for f in fractions)
            + " |"
        )
    at10 = {m: cos[(m, "combined", 0.10)] for m in names if (m, "combined", 0.10) in cos}
    share10 = {m: first_order[(m, "combined", 0.10)] for m in at10}
    checks = []
    if at10:
        ranking = sorted(at10, key=at10.get, reverse=True)
        worst = ranking[-1]
        check = (
            f"Training impact at 10 % of the pixels (cosine): best {ranking[0]} ({at10[ranking[0]]:.3f}), then {', '.join(ranking[1:4])}; "
            f"worst {worst} ({at10[worst]:.3f})."
        )
        if "meta" in at10 and "normgrad" in at10:
            check += f" Meta {at10['meta']:.3f} vs NormGrad {at10['normgrad']:.3f}: " + (
                "meta-saliency selects pixels that carry more of the training gradient."
                if at10["meta"] > at10["normgrad"]
                else "meta-saliency does NOT select pixels that carry more of the training gradient here."
            )
        if "adversarial" in at10 and "meta" in at10:
            check += f" Adversarial {at10['adversarial']:.3f}: " + (
                "below meta, as expected." if at10["adversarial"] < at10["meta"] else "NOT below meta, contrary to expectation."
            )
        if "random" in at10:
            check += f" Random {at10['random']:.3f}."
        best_share = max(share10, key=share10.get)
        titles = {"normgrad": "NormGrad", "meta": "meta", "adversarial": "adversarial", "random": "random"}
        named = ", ".join(f"{title} {share10[m]:.3f}" for m, title in titles.items() if m in share10)
        checks = [
            check,
            f"First-order share of the full step's loss reduction kept with 10 % of the pixels: best {best_share} "
            f"({share10[best_share]:.3f})" + (f"; {named}." if named else "."),
        ]
    return Section(lines, checks, {"training_cosine_at_10pct": at10, "training_first_order_share_at_10pct": share10})
