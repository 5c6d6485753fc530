"""The faithfulness JSON → ``faithfulness.md`` (verdicts first, then every method's numbers)."""

from __future__ import annotations

import math
import re
from typing import Any

from normgrad.evaluation.faithfulness.summary import MARGIN, PRIMARY

TITLES = {
    "road_combined": "ROAD combined ↑",
    "road_morf": "ROAD MoRF ↓",
    "road_lerf": "ROAD LeRF ↑",
    "deletion": "deletion ↓",
    "insertion": "insertion ↑",
    "deletion_road": "deletion (ROAD) ↓",
    "insertion_road": "insertion (ROAD) ↑",
}


def interval(entry: dict[str, float], signed: bool = False) -> str:
    value, low, high = entry["value"], entry["low"], entry["high"]
    form = "{:+.3f}" if signed else "{:.3f}"
    if not (math.isfinite(low) and math.isfinite(high)):
        return form.format(value)
    return f"{form.format(value)} [{form.format(low)}, {form.format(high)}]"


def p_value(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def render(document: dict[str, Any]) -> str:
    total = document.get("timings_s", {}).get("total", 0.0)
    lines = [
        "# Which map is faithful to the model? ROAD and insertion/deletion for every method",
        "",
        f"Regenerate with `{document.get('command', 'normgrad eval faithfulness --out docs')}` "
        f"({total / 60:.1f} min of computation on a shared 2-core machine"
        + (
            f"; this page's parts ran as separate processes, `{'`, `'.join(re.sub(' --out [^ ]+', '', p) for p in document['parts'])}`, "
            "merged with `--merge`"
            if len(document.get("parts", [])) > 1
            else ""
        )
        + "). Raw numbers: `faithfulness.json`.",
        "",
        "Metrics, per image, then averaged (95 % bootstrap intervals over images; fewer than 20 images: ± t · jackknife SE):",
        "",
        "- **ROAD** (Rong et al. 2022): remove a fraction of the pixels by the map, fill them by noisy linear imputation "
        "(the 8-neighbour weighted mean, one sparse system per image, noise σ = 0.01 on un-normalised pixels), read the "
        "softmax probability of the target class. MoRF removes the most relevant first (lower is better), LeRF the least "
        "relevant first (higher is better); *combined* = (mean LeRF − mean MoRF) / 2 (higher is better), "
        "as pytorch-grad-cam's ROADCombined.",
        "- **Insertion / deletion** (Petsiuk et al. 2018, RISE's protocol): the probability as pixels are deleted to a zero "
        "substrate (model space) or inserted into a blurred copy (RISE's 11 × 11, σ = 5 kernel), normalised AUC; and the same "
        "with the ROAD imputation as the substrate.",
        "",
        "## What holds (computed)",
        "",
        f"Each claim is a paired per-image difference on the same images. Verdict on ROAD combined: *supported* when the 95 % "
        f"interval lies on the claimed side of 0; *not supported* when it lies on the other side or inside ±{MARGIN} "
        "(no practical difference); *inconclusive* otherwise. The other metrics' verdicts (same rule) stand beside it.",
        "",
        "| claim | regime | ROAD combined a − b [95 % CI] | Wilcoxon p | verdict | deletion | insertion "
        "| deletion (ROAD) | insertion (ROAD) |",
        "|---|---|---|---:|---|---|---|---|---|",
    ]
    for claim in document["claims"]:
        metrics = claim["metrics"]
        primary = metrics.get(PRIMARY)
        if primary is None:
            continue
        others = [metrics[m]["verdict"] if m in metrics else "—" for m in ("deletion", "insertion", "deletion_road", "insertion_road")]
        lines.append(
            f"| {claim['claim']} | {claim['regime']} (n = {primary['n']}) | {interval(primary['difference'], signed=True)} | "
            f"{p_value(primary['wilcoxon_p'])} | **{claim['verdict']}** | " + " | ".join(others) + " |"
        )
    for regime, table in document["tables"].items():
        info = document["regimes"][regime]
        settings = info["settings"]
        lines += [
            "",
            f"## {regime}",
            "",
            f"{info['description']}. Layers: {', '.join(info['layers'])}; the explain default: "
            + ", ".join(f"{layer}: {method}" for layer, method in info["default"].items())
            + f". ROAD fractions {', '.join(f'{f:g}' for f in settings['fractions'])}; insertion/deletion in "
            f"{settings['iterations']} iterations (ROAD substrate: {settings['road_iterations'] or 'not run'}).",
            "",
        ]
        metrics = [m for m in TITLES if any(m in row for row in table["subjects"].values())]
        for title, rows in (("Final maps", _rows(table, combined=True)), ("Per layer", _rows(table, combined=False))):
            if not rows:
                continue
            lines += [f"### {title}", "", "| method | " + " | ".join(TITLES[m] for m in metrics) + " | s / image |"]
            lines.append("|---|" + "---:|" * (len(metrics) + 1))
            for label, row in rows:
                seconds = table["seconds_per_image"].get(row["method"])
                time_cell = f"{seconds:.3f}" if seconds is not None and row["layer"] == "combined" else ""
                lines.append(f"| {label} | " + " | ".join(interval(row[m]) for m in metrics) + f" | {time_cell} |")
            lines.append("")
        lines.append(
            "Seconds per image: the map's whole call on this machine (the model's forward/backward included), contended; "
            "for timings, see the benchmark command in the README."
        )
    if "shortcut" in document:
        from normgrad.evaluation.faithfulness.shortcut_study import markdown

        lines += ["", markdown(document["shortcut"])]
    return "\n".join(lines) + "\n"


def _rows(table: dict[str, Any], combined: bool) -> list[tuple[str, dict]]:
    rows = [(label, row) for label, row in table["subjects"].items() if (row["layer"] == "combined") == combined]
    return sorted(rows, key=lambda item: -item[1][PRIMARY]["value"])
