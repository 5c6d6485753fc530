"""The explain default beside pytorch-grad-cam's anchors on the grid benchmark: hit, mass, and time per map.

Same model (the embedded EfficientNet-Lite0), same layers (the default's),
same inputs (the default's input policy, the grid at its own size up to
448 on the shorter side) and the same grids as docs/grid-benchmark.md
(:mod:`normgrad.evaluation.grid_benchmark`: confident photos from the
installed packages and ``make benchmark-photos``, development and held-out
splits by photo).  Each grid is explained once per method for all its cells
(a batch of one copy per cell, target = that cell's class); each final map
is brought to the grid's size (bilinear) and scored with
:func:`~normgrad.evaluation.grid.cell_scores`.  Intervals resample photos.

Time per map: wall-clock seconds of one method's call on one grid divided by
its cells; beside it the model's own forward/backward on the same batch
(logits, then the gradient of the target logits with respect to the input).

Run: ``python -m normgrad.evaluation.faithfulness.anchor_grid --split held-out --out docs``
(the photos first: ``make benchmark-photos``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import normgrad as ng
from normgrad.defaults import layered
from normgrad.evaluation import grid_benchmark as benchmark
from normgrad.evaluation.benchmark_photos import PHOTO_ROOT
from normgrad.evaluation.faithfulness.anchors import ANCHORS, anchor_maps
from normgrad.evaluation.grid import cell_records

DEFAULT = "default"


def forward_backward_seconds(model: torch.nn.Module, x: Tensor, targets: Tensor) -> float:
    """The model's own forward and backward (to the input) on ``x``: the floor any gradient map pays."""
    started = time.perf_counter()
    inputs = x.detach().requires_grad_(True)
    logits = model(inputs)
    torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), inputs)
    return time.perf_counter() - started


def grid_maps(loaded: Any, x: Tensor, targets: Tensor, defaults: Any, methods: tuple[str, ...]) -> dict[str, tuple[Tensor, float]]:
    """``{method: ((N, 1, h, w) final map at the input's size, seconds)}`` for one grid's batch."""
    out = {}
    size = tuple(x.shape[-2:])
    for name in methods:
        started = time.perf_counter()
        if name == DEFAULT:
            raw = layered(defaults.methods)(loaded.model, x, targets, layers=list(defaults.layers))
            final = ng.combine({k: v.detach().float() for k, v in raw.items()}, size=size, mode=defaults.combine)
        else:
            final = anchor_maps(name, loaded.model, x, targets, list(defaults.layers))
        out[name] = (final, time.perf_counter() - started)
    return out


def score_grids(
    loaded: Any,
    specs: list[dict],
    paths: dict[str, str],
    methods: tuple[str, ...],
    progress: Callable[[Iterable], Iterable] = iter,
    journal: Path | None = None,
) -> list[dict]:
    """One record per (grid, cell, method): hit, mass, seconds per map; and the model's forward/backward per map.

    With ``journal`` (a JSON-lines file) each grid's records are appended as they are made, and grids already
    there are read back instead of recomputed (an interrupted run resumes).
    """
    defaults = loaded.explain_defaults()
    preprocess = defaults.preprocess
    records = []
    done: dict[str, list[dict]] = {}
    if journal is not None and journal.exists():
        for line in journal.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done.setdefault(row["grid"], []).append(row)
    for spec in progress(specs):
        if spec["id"] in done:
            records += done[spec["id"]]
            continue
        start = len(records)
        grid = benchmark.build(spec, paths)
        width, height = grid.image.size
        targets = torch.tensor(grid.classes)
        x = preprocess(grid.image)[None].expand(len(grid.classes), -1, -1, -1).contiguous()
        floor = forward_backward_seconds(loaded.model, x, targets) / len(grid.classes)
        for name, (final, seconds) in grid_maps(loaded, x, targets, defaults, methods).items():
            full = ng.images.to_original_size(final, width, height)
            records += cell_records(spec, grid, full, name, seconds_per_map=seconds / len(grid.classes),
                                    forward_backward_per_map=floor, input=list(x.shape[-2:]))  # fmt: skip
        if journal is not None:
            with journal.open("a") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in records[start:])
    return records


def by_layout(records: list[dict], layouts: tuple[str, ...] = ("2x2", "3x3")) -> dict[str, list[dict]]:
    """Records grouped by grid family: ``2x2`` holds every 2×2 layout (equal, scenes, mixed sizes), ``3x3`` every 3×3."""
    return {name: [r for r in records if r["layout"].startswith(name)] for name in layouts}


def summary(records: list[dict], resamples: int = 2000) -> dict[str, Any]:
    """Per grid family: each method's hit and mass (95 % intervals over photos), time per map and its ratio to the
    model's forward/backward; the default minus each anchor, paired."""
    out: dict[str, Any] = {}
    for family, rows in by_layout(records).items():
        if not rows:
            continue
        table = benchmark.summarise(rows, resamples)
        for name in table:
            mine = [r for r in rows if r["candidate"] == name]
            seconds = sum(r["seconds_per_map"] for r in mine) / len(mine)
            floor = sum(r["forward_backward_per_map"] for r in mine) / len(mine)
            table[name].update({"seconds_per_map": seconds, "forward_backward_per_map": floor, "cost_ratio": seconds / floor})
        differences = {}
        for anchor in [n for n in table if n != DEFAULT]:
            differences[anchor] = {
                metric: benchmark.paired_difference(rows, DEFAULT, anchor, metric, resamples) for metric in ("hit", "mass")
            }
        out[family] = {"methods": table, "default_minus": differences}
    return out


def markdown(result: dict[str, Any], split: str, command: str) -> str:
    lines = [
        f"# The explain default beside pytorch-grad-cam 1.5.7's anchors ({split} grids)",
        "",
        f"Regenerate with `{command}`. Same model (embedded EfficientNet-Lite0), layers (the default's), inputs (the "
        "default's input policy) and grids as docs/grid-benchmark.md; hit = the map's argmax in the target's cell, mass = the "
        "share of the map's positive mass in it; 95 % intervals resample photos. Time per map: wall clock on the machine that "
        "ran it (`× f/b`: over the model's own forward/backward on the same batch).",
        "",
    ]
    for family, block in result.items():
        lines += [f"## {family} grids", "", "| method | hit [95 % CI] | mass [95 % CI] | s / map | × f/b | targets |"]
        lines.append("|---|---:|---:|---:|---:|---:|")
        for name, row in sorted(block["methods"].items(), key=lambda kv: (kv[0] != DEFAULT, -kv[1]["mass"][0])):
            (hit, hl, hh), (mass, ml, mh) = row["hit"], row["mass"]
            lines.append(
                f"| {name} | {hit:.3f} [{hl:.3f}, {hh:.3f}] | {mass:.3f} [{ml:.3f}, {mh:.3f}] | {row['seconds_per_map']:.3f} | "
                f"{row['cost_ratio']:.2f} | {row['targets']} |"
            )
        lines += ["", "| default − anchor | Δ hit [95 % CI] | Δ mass [95 % CI] |", "|---|---:|---:|"]
        for anchor, d in block["default_minus"].items():
            (h, hl, hh), (m, ml, mh) = d["hit"], d["mass"]
            lines.append(f"| {anchor} | {h:+.3f} [{hl:+.3f}, {hh:+.3f}] | {m:+.3f} [{ml:+.3f}, {mh:+.3f}] |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import argparse

    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="held-out", choices=["development", "held-out"])
    parser.add_argument("--cache", type=Path, default=PHOTO_ROOT / "cache")
    parser.add_argument("--out", type=Path, default=None, help="write OUT/anchors-<split>.md and .json")
    parser.add_argument("--per-layout", type=int, default=None, help="the first N grids of each layout only (a partial run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="summarise the grids already in OUT's journal, compute nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = ng.models.load()
    photos = benchmark.benchmark_photos(loaded, args.cache)
    specs = benchmark.grids_for(photos, args.split)
    if args.per_layout:
        specs = [spec for spec in specs if sum(other["layout"] == spec["layout"] for other in specs[: specs.index(spec)]) < args.per_layout]
    paths = {p["name"]: p["path"] for p in photos}
    journal = args.out / f"anchors-{args.split}.records.jsonl" if args.out else None
    if journal is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        lines = journal.read_text().splitlines() if journal is not None and journal.exists() else []
        done = {json.loads(line)["grid"] for line in lines if line.strip()}
        specs = [spec for spec in specs if spec["id"] in done]
    records = score_grids(loaded, specs, paths, (DEFAULT, *ANCHORS), progress=lambda items: tqdm(items, mininterval=5), journal=journal)
    result = summary(records)
    partial = f" --per-layout {args.per_layout}" if args.per_layout else ""
    command = f"python -m normgrad.evaluation.faithfulness.anchor_grid --split {args.split}{partial} --out docs"
    text = markdown(result, args.split, command)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"anchors-{args.split}.json").write_text(json.dumps({"summary": result, "records": records}, indent=0) + "\n")
        (args.out / f"anchors-{args.split}.md").write_text(text)


if __name__ == "__main__":
    main()
