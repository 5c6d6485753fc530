"""How much does one inner training step change the maps?  (meta-saliency evidence)

For each real photo and layer, compares the plain map with the meta map
(one SGD step on the image's own loss first) and with the adversarial map
(one step up the loss), by Spearman ρ as the authors did, at several
learning rates.  To first order in ``lr`` the meta and adversarial changes
are opposite, ``Δ_adv ≈ −Δ_meta``; ``ρ(Δ_meta, Δ_adv)`` near −1 confirms it.

Run: ``python -m normgrad.evaluation.meta_effect [--out docs/meta-effect.md]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import normgrad as ng
from normgrad.evaluation.metrics import spearman
from normgrad.evaluation.photos import load_photos
from normgrad.models import LoadedModel, load
from normgrad.pipeline import predict

METHODS: dict[str, Callable[..., Any]] = {"NormGrad": ng.normgrad, "selective": ng.normgrad_selective}


def meta_effect(loaded: LoadedModel, photos: dict[str, Any], lrs: tuple[float, ...] = (1e-5, 1e-4, 2.5e-3, 1e-2)) -> list[dict]:
    """One record per (photo, method, lr, layer) with the correlations and the relative size of the change."""
    records = []
    for photo_name, photo in photos.items():
        x = loaded.preprocess(photo)[None]
        target = int(predict(loaded.model, x).classes[0])
        layers = loaded.default_layers(x)
        for method_name, method in METHODS.items():
            plain = method(loaded.model, x, target, layers=layers)
            plain["combined"] = ng.combine(plain, size=x.shape[-2:])
            for lr in lrs:
                meta = ng.meta_saliency(loaded.model, x, target, method=method, lr=lr, layers=layers)
                adversarial = ng.meta_saliency(loaded.model, x, target, method=method, lr=lr, adversarial=True, layers=layers)
                meta["combined"] = ng.combine(meta, size=x.shape[-2:])
                adversarial["combined"] = ng.combine(adversarial, size=x.shape[-2:])
                for layer in plain:
                    p, m, a = plain[layer], meta[layer], adversarial[layer]
                    records.append(
                        {
                            "photo": photo_name,
                            "class": loaded.class_name(target),
                            "method": method_name,
                            "lr": lr,
                            "layer": layer,
                            "rho_plain_meta": spearman(p, m),
                            "rho_plain_adversarial": spearman(p, a),
                            "rho_meta_adversarial": spearman(m, a),
                            "rho_delta_meta_delta_adversarial": spearman(m - p, a - p),
                            "relative_change_meta": float((m - p).norm() / p.norm().clamp_min(1e-12)),
                        }
                    )
    return records


def summarise(records: list[dict]) -> str:
    """A markdown table: means over photos per method, lr and layer."""
    keys = ["rho_plain_meta", "rho_plain_adversarial", "rho_meta_adversarial", "rho_delta_meta_delta_adversarial", "relative_change_meta"]
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["method"], record["lr"], record["layer"]), []).append(record)
    lines = [
        "| method | lr | layer | ρ(plain, meta) | ρ(plain, adv) | ρ(meta, adv) | ρ(Δmeta, Δadv) | ‖Δmeta‖/‖plain‖ |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (method, lr, layer), group in groups.items():
        means = []
        for key in keys:
            values = [r[key] for r in group if not math.isnan(r[key])]
            means.append(statistics.fmean(values) if values else float("nan"))
        lines.append(f"| {method} | {lr:g} | {layer} | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/meta-effect.md"))
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 1e-4, 2.5e-3, 1e-2])
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load()
    photos = load_photos()
    records = meta_effect(loaded, photos, tuple(args.lrs))
    classes = ", ".join(
        f"{r['photo']} → {r['class']}" for r in records if r["method"] == "NormGrad" and r["layer"] == "combined" and r["lr"] == args.lrs[0]
    )
    text = (
        "# Meta-saliency: how one inner training step changes the maps\n\n"
        f"Embedded EfficientNet-Lite0 (ImageNet), scikit-image photos ({classes}); target and step labels = the predicted class; "
        f"layers {loaded.default_layers()} and their product combination. Means over the {len(photos)} photos. "
        "Command: `python -m normgrad.evaluation.meta_effect`.\n\n" + summarise(records) + "\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(records, indent=1))
    print(text)


if __name__ == "__main__":
    main()
