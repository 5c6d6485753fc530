"""``training.md`` from the study's JSON summary: the computed verdicts first, then every table."""

from __future__ import annotations

from typing import Any

from normgrad.evaluation.training.per_image import PAPER_LR
from normgrad.evaluation.training.summary import ACCURACY_MARGIN, PRIMARY_FILL, PRIMARY_FRACTION, SHARE_MARGIN


def _ci(row: dict[str, Any], digits: int = 3) -> str:
    return f"{row['value']:.{digits}f} [{row['low']:.{digits}f}, {row['high']:.{digits}f}]"


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"


def what_holds(claims: list[dict[str, Any]]) -> list[str]:
    """The verdict table (also quoted by the README)."""
    lines = [
        "| claim | test | regime, measure | setting | difference [95 % CI] | Wilcoxon p | d_z | verdict "
        "| other settings: claimed / opposite / all |",
        "|---|---|---|---|---|---:|---:|---|---|",
    ]
    for c in claims:
        d = c["difference"]
        robust = c["robustness"]
        robust_text = f"{robust['claimed_side']} / {robust['opposite_side']} / {robust['settings']}" if robust else "—"
        dz = "—" if c["cohen_dz"] is None else f"{c['cohen_dz']:+.2f}"
        lines.append(
            f"| {c['claim']} | {c['test']} | {c['regime']}, {c['measure']} (n = {c['n']}) | {c['setting']} | "
            f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | {_p(c['wilcoxon_p'])} | {dz} | **{c['verdict']}** | {robust_text} |"
        )
    return lines


def roar_leak(roar: dict[str, Any]) -> list[dict[str, Any]]:
    """ROAR/KAR points that retrain *above* the unmodified images (interval entirely above the reference mean)."""
    return [r for r in roar["accuracy"] if r["low"] > roar["reference"]["value"]]


def _computed_notes(document: dict[str, Any]) -> list[str]:
    """Caveats computed from the numbers: how little the inner step changes the maps, and ROAR's mask leak."""
    notes = []
    fashion = document["per_image"].get("fashion-mnist", {})
    same = [r for r in fashion.get("overlap", []) if (r["a"], r["b"]) == ("meta", "normgrad") and abs(r["lr"] - PAPER_LR) < 1e-12]
    if same:
        notes.append(
            f"- At the paper's lr, meta-saliency and NormGrad keep {same[0]['value']:.1%} of the same top-"
            f"{same[0]['fraction']:.0%} pixels (see the learning-rate axis): one inner SGD step barely moves the map, so "
            "the two can hardly differ in what their pixels do for training."
        )
    roar = document.get("roar")
    if roar:
        leaks = roar_leak(roar)
        if leaks:
            notes.append(
                f"- ROAR/KAR caveat: {len(leaks)} of {len(roar['accuracy'])} method × mode × k points retrain to a higher test "
                f"accuracy than the unmodified images ({roar['reference']['value']:.3f}), the interval entirely above it. The pattern "
                "of replaced pixels can itself tell the class (a mean-grey patch in the shape of the garment on a black "
                "background, say), so here ROAR and KAR measure that leak as well as the information in the pixels "
                "(Rong et al. 2022 describe it); "
                "their differences between methods should not be read as 'pixels that matter for training'."
            )
    return [*notes, ""] if notes else []


def _share_table(summary: dict[str, Any], measure: str, kind: str, lr: float, fill: str) -> list[str]:
    rows = {
        (r["method"], r["fraction"]): r
        for r in summary["shares"]
        if (r["measure"], r["kind"], r["fill"]) == (measure, kind, fill) and abs(r["lr"] - lr) < 1e-12
    }
    if not rows:
        return []
    fractions = summary["fractions"]
    lines = ["| method | " + " | ".join(f"k = {f:.0%}" for f in fractions) + " |", "|---|" + "---:|" * len(fractions)]
    for method in summary["methods"]:
        lines.append(f"| {method} | " + " | ".join(_ci(rows[(method, f)]) if (method, f) in rows else "" for f in fractions) + " |")
    return lines


def _comparison_table(summary: dict[str, Any], measure: str, lr: float, fill: str) -> list[str]:
    rows = [
        c
        for c in summary["comparisons"]
        if (c["measure"], c["kind"], c["fill"]) == (measure, "measured", fill) and abs(c["lr"] - lr) < 1e-12
    ]
    if not rows:
        return []
    lines = [
        "| a − b | k | difference of shares [95 % CI] | Wilcoxon p | Cohen's d_z | rank-biserial r |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for c in sorted(rows, key=lambda c: (c["a"], c["b"], c["fraction"])):
        d = c["difference"]
        lines.append(
            f"| {c['a']} − {c['b']} | {c['fraction']:.0%} | {d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | "
            f"{_p(c['wilcoxon_p'])} | {c['cohen_dz']:+.2f} | {c['rank_biserial']:+.2f} |"
        )
    return lines


def _lr_table(summary: dict[str, Any], kind: str) -> list[str]:
    rows = {
        (r["method"], r["lr"]): r
        for r in summary["shares"]
        if (r["measure"], r["kind"], r["fill"]) == ("self", kind, PRIMARY_FILL) and abs(r["fraction"] - PRIMARY_FRACTION) < 1e-9
    }
    lrs = summary["lrs"]
    lines = ["| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---:|" * len(lrs)]
    for method in summary["methods"]:
        lines.append(f"| {method} | " + " | ".join(_ci(rows[(method, lr)]) if (method, lr) in rows else "" for lr in lrs) + " |")
    return lines


def _overlap_table(summary: dict[str, Any]) -> list[str]:
    """How much of the top-k % selection the inner step changes (mean share of pixels in common, per lr)."""
    rows = summary.get("overlap")
    if not rows:
        return []
    lrs = sorted({r["lr"] for r in rows})
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in rows))
    table = {(r["a"], r["b"], r["lr"]): r for r in rows}
    return [
        f"How much the inner step changes what is selected: the mean share of the top-{rows[0]['fraction']:.0%} pixels two maps "
        "have in common (1: the same pixels).",
        "",
        "| maps | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
        "|---|" + "---:|" * len(lrs),
        *[f"| {a} vs {b} | " + " | ".join(_ci(table[(a, b, lr)]) for lr in lrs) + " |" for a, b in pairs],
        "",
    ]


def render(document: dict[str, Any]) -> str:
    """The whole ``training.md``."""
    config, timings, model = document["config"], document["timings_s"], document["model"]
    per_image, roar = document["per_image"], document.get("roar")
    fashion = per_image.get("fashion-mnist")
    lines = [
        "# Does meta-saliency find the pixels that matter for training?",
        "",
        f"Regenerate with `normgrad eval training --out docs{' --quick' if config['quick'] else ''}` "
        f"({'QUICK MODE: too few images for conclusions; ' if config['quick'] else ''}"
        f"total {timings['total'] / 60:.1f} min on this machine: "
        + ", ".join(f"{k.replace('_', ' ')} {v / 60:.1f} min" for k, v in timings.items() if k != "total")
        + f"; {document.get('threads', '?')} torch thread(s), {config['jobs']} ROAR worker process(es) alongside)."
        " Raw numbers: `training.json`; per-image and retraining arrays: `training-records.npz` (not committed).",
        "",
        f"**Model**: a {model['parameters']:,}-parameter CNN (three 3×3 conv + BatchNorm + ReLU stages, linear head) trained here "
        f"on Fashion-MNIST ({model['train_images']:,} training images, {model['epochs']} epochs, seed {model['seed']}): "
        f"test accuracy **{model['test_accuracy']:.4f}**; training took {model['train_seconds']:.0f} s "
        f"({model['train_timing_note']}). Maps for NormGrad, selective, meta, meta:selective, adversarial and Grad-CAM: "
        f"product of the normalised maps of layers {', '.join(model['layers'])}; gradient and input × gradient from Captum; "
        "target = the image's label.",
        "",
        "## What holds (computed)",
        "",
        f"Each claim is a paired difference between two methods on the same images, tested at one setting fixed in advance "
        f"(k = {PRIMARY_FRACTION:.0%} of the pixels kept, the rest the dataset mean, the paper's lr {PAPER_LR:g}, the measured loss "
        "change). *supported*: the 95 % interval lies on the claimed side of 0; *not supported*: it lies on the other side, or "
        f"inside ±{SHARE_MARGIN} (±{ACCURACY_MARGIN * 100:.1f} accuracy points for ROAR/KAR: no practical difference); "
        "*inconclusive*: otherwise. The last column counts, over every k and fill at the same lr, the settings whose interval "
        "lies on the claimed side and on the opposite side.",
        "",
        *what_holds(document["claims"]),
        "",
        *_computed_notes(document),
    ]
    if fashion:
        lines += [
            "## Per-image training impact, Fashion-MNIST",
            "",
            f"{fashion['n']} test images ({fashion['description']}). For each, keep the top-k % pixels by a map (the rest: the "
            "dataset mean, a blurred copy σ = 2 px, or ROAD's noisy linear imputation from the kept pixels), take the paper's "
            "inner step on that image (plain SGD, every parameter, "
            "eval mode) and measure the loss reduction it gives the *unmasked* image, and the mean loss of "
            f"{config['pool']} held-out test images of the same class. **Share** = Σ masked-step reductions / Σ full-image-step "
            "reductions over the images (1: the kept pixels do for training what the whole image does; 0: nothing; > 1: more, "
            "the step on fewer pixels can be larger). Intervals: 95 % BCa bootstrap over images. Steps and losses in "
            f"{config['precision']}. Mean loss of the images "
            f"{fashion['mean_loss']:.3f}; the full step lowers the image's loss for "
            + ", ".join(f"{v:.1%} (lr {k})" for k, v in fashion["full_step_helps"].items())
            + " of them"
            + (
                "; on the others, confidently classified images, the change is below what float32 resolves (0 exactly): "
                "they weigh nothing in the shares."
                if config["precision"] == "float32"
                else "."
            ),
            "",
            "![impact vs k](training_per_image.png)",
            "",
        ]
        for fill in fashion["fills"]:
            lines += [
                f"### Unmasked image, rest = {fill}, lr {PAPER_LR:g}",
                "",
                *_share_table(fashion, "self", "measured", PAPER_LR, fill),
                "",
            ]
        for fill in fashion["fills"]:
            table = _share_table(fashion, "class", "measured", PAPER_LR, fill)
            if table:
                lines += [f"### Held-out images of the same class, rest = {fill}, lr {PAPER_LR:g}", "", *table, ""]
        lines += [
            "### Paired comparisons (unmasked image, rest = mean, lr 0.0025)",
            "",
            *_comparison_table(fashion, "self", PAPER_LR, PRIMARY_FILL),
            "",
            "### Paired comparisons (held-out images of the class, rest = mean, lr 0.0025)",
            "",
            *_comparison_table(fashion, "class", PAPER_LR, PRIMARY_FILL),
            "",
            "### The same, to first order in lr",
            "",
            "Share of ⟨∇L, G_k⟩ over ⟨∇L, G⟩ (the limit lr → 0 of the measured share; G_k the masked image's gradient): "
            "unmasked image, rest = mean.",
            "",
            *_share_table(fashion, "self", "first_order", PAPER_LR, PRIMARY_FILL),
            "",
            "## The learning-rate axis",
            "",
            f"The same study at three learning rates: the meta and adversarial maps take their inner step with that lr, and the "
            f"measured step uses it too. Share at k = {PRIMARY_FRACTION:.0%}, rest = mean, unmasked image.",
            "",
            "![lr axis](training_lr.png)",
            "",
            *_lr_table(fashion, "measured"),
            "",
            *_overlap_table(fashion),
        ]
        for lr in fashion["lrs"]:
            if abs(lr - PAPER_LR) > 1e-12:
                lines += [
                    f"Paired comparisons at lr {lr:g} (unmasked image, rest = mean):",
                    "",
                    *_comparison_table(fashion, "self", lr, "mean"),
                    "",
                ]
    imagenet = per_image.get("imagenet")
    if imagenet:
        lines += [
            "## Second regime: the embedded ImageNet EfficientNet-Lite0 on real photos",
            "",
            f"{imagenet['n']} photos ({imagenet['description']}), label = the model's prediction (no ground truth ships with "
            "them), no held-out images of the same class (one photo per class), so the unmasked image's loss only; the lr axis "
            "runs on Fashion-MNIST only. Intervals: ± t_{n−1} × the jackknife standard error (the bootstrap under-covers with "
            "fewer than 20 images); with so few photos they are wide by construction.",
            "",
            "![imagenet](training_imagenet.png)",
            "",
        ]
        for fill in imagenet["fills"]:
            lines += [
                f"### Unmasked photo, rest = {fill}, lr {PAPER_LR:g}",
                "",
                *_share_table(imagenet, "self", "measured", PAPER_LR, fill),
                "",
            ]
        lines += ["### Paired comparisons (rest = mean, lr 0.0025)", "", *_comparison_table(imagenet, "self", PAPER_LR, "mean"), ""]
    if roar:
        lines += _roar_section(roar)
    lines += [
        "## Example masks",
        "",
        "What each method keeps of two test images at each k (the rest set to the dataset mean).",
        "",
        "![masks](training_masks.png)",
        "",
    ]
    return "\n".join(lines) + "\n"


def _roar_section(roar: dict[str, Any]) -> list[str]:
    fractions = roar["fractions"]
    rows = {(r["method"], r["mode"], r["fraction"]): r for r in roar["accuracy"]}
    ref = roar["reference"]
    lines = [
        "## Retraining: ROAR and KAR (Hooker et al. 2019)",
        "",
        f"Every training and test image modified by each method's map (computed once with the trained model): ROAR removes the "
        f"top-k % pixels (set to the dataset mean), KAR keeps only them. A fresh model is trained on {roar['train_images']:,} "
        f"modified training images ({roar['epochs']} epochs; the same architecture; seeds {', '.join(map(str, roar['seeds']))}, "
        f"the same for every method) and tested on {roar['test_images']:,} modified test images. Intervals: mean over seeds "
        "± t·sqrt(s²/S + test-set sampling variance). Unmodified data: accuracy "
        f"{_ci(ref)}. ROAR: lower is a better attribution; KAR: higher. Time: {roar['seconds'] / 60:.1f} min "
        f"({roar['retrain_seconds_mean']:.1f} s per retraining).",
        "",
        "![ROAR and KAR](training_roar.png)",
        "",
    ]
    for mode in roar["modes"]:
        lines += [f"### {mode.upper()}", "", "| method | " + " | ".join(f"k = {f:.0%}" for f in fractions) + " |"]
        lines.append("|---|" + "---:|" * len(fractions))
        for method in roar["methods"]:
            lines.append(
                f"| {method} | " + " | ".join(_ci(rows[(method, mode, f)]) if (method, mode, f) in rows else "" for f in fractions) + " |"
            )
        lines.append("")
    lines += [
        "### Paired differences, mean accuracy over k",
        "",
        "| a − b | mode | difference [95 % CI] | per seed |",
        "|---|---|---|---|",
    ]
    for c in roar["comparisons"]:
        lines.append(
            f"| {c['a']} − {c['b']} | {c['mode'].upper()} | {c['value']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] | "
            + ", ".join(f"{v:+.4f}" for v in c["per_seed"])
            + " |"
        )
    lines.append("")
    return lines
