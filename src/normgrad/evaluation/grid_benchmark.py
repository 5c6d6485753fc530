"""The grid benchmark that chose the default: many grids of real photos, every candidate, bootstrap intervals.

The maps of each (grid, input policy, method) are computed once, for every
candidate layer at once, through the path ``normgrad explain`` takes
(preprocess → maps → :func:`normgrad.combine` / ``to_original_size`` at the
grid's own size), and cached in ``cache/``; a candidate (method, layers,
combination) is then scored from the cached maps.  ``normgrad eval grid``
runs the headline candidates (:func:`report_candidates`, any model);
``python -m normgrad.evaluation.grid_benchmark --set main|signed|refined|meta``
the EfficientNet-Lite0 sweep, ``--docs docs`` writes docs/grid-benchmark.md.
A candidate's layer written ``method/layer`` uses its own method (the
default mixes selective and ``scaling+sum``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import normgrad as ng
from normgrad.defaults import defaults_for
from normgrad.errors import NormGradError
from normgrad.evaluation.benchmark_photos import PHOTO_ROOT, confident_photos, install_hint, photo_files, split
from normgrad.evaluation.grid import LAYOUTS, Grid, benchmark_grids, bootstrap_mean, cell_records, make_grid
from normgrad.registry import get_method

DEV_COUNTS = {"2x2": 60, "2x2 scenes": 20, "2x2 mixed": 20, "3x3": 10, "3x3 mixed": 6}
HELDOUT_COUNTS = {"2x2": 40, "2x2 scenes": 15, "2x2 mixed": 12, "3x3": 6, "3x3 mixed": 4}


@dataclass(frozen=True)
class Candidate:
    """A configuration of ``normgrad explain``: method, layers, how they combine, input policy."""

    method: str
    layers: tuple[str, ...]
    combine: str = "product"  # product, geometric, sum, or none (one layer)
    weights: tuple[float, ...] | None = None
    policy: str = "224"

    def parts(self) -> list[tuple[str, str]]:
        """``(method, layer)`` per map; a layer written ``method/layer`` takes its own method (a mixed candidate: ``default``)."""
        return [tuple(layer.split("/", 1)) if "/" in layer else (self.method, layer) for layer in self.layers]

    @property
    def label(self) -> str:
        weights = f" w={','.join(f'{w:g}' for w in self.weights)}" if self.weights else ""
        how = "" if len(self.layers) == 1 else f" {self.combine}{weights}"
        return f"{self.method} [{', '.join(self.layers)}]{how} @{self.policy}"


def policy(preprocess: ng.models.Preprocess, name: str) -> ng.models.Preprocess:
    """An input-resolution policy: ``"224"`` — the shorter side resized to 224 (today's); ``"keep<=448"`` — kept
    between the model's size and 448."""
    if name.isdigit():
        return replace(preprocess, size=int(name), max_size=None)
    if name.startswith("keep<=") and name[6:].isdigit():
        return replace(preprocess, max_size=int(name[6:]))
    raise NormGradError(f"unknown input policy {name!r}; valid: a side such as '224', or 'keep<=448'")


@lru_cache(maxsize=256)
def _photo(path: str) -> Any:
    return ng.images.load_image(path)


def build(spec: dict, paths: dict[str, str]) -> Grid:
    """The grid image of a benchmark spec (see :func:`normgrad.evaluation.grid.benchmark_grids`)."""
    photos = [_photo(paths[name]) for name in spec["names"]]
    return make_grid(photos, spec["widths"], spec["heights"], spec["names"], spec["classes"])


class MapCache:
    """Per-layer maps of one (grid, policy, method), at each layer's own resolution, kept on disk (float16)."""

    def __init__(self, loaded: Any, folder: Path, lr: float = 2.5e-3) -> None:
        self.loaded, self.folder, self.lr = loaded, folder, lr

    def maps(self, grid_id: str, grid: Grid, policy_name: str, method: str, layers: tuple[str, ...]) -> dict[str, Tensor]:
        """The maps of ``layers`` (computed once: a pass gives every layer); ``grid_id`` names the grid's content."""
        path = self.folder / policy_name.replace("<=", "le") / method.replace(":", "-") / f"{grid_id}.pt"
        if path.exists():
            cached = torch.load(path, weights_only=True)
            if all(layer in cached for layer in layers):
                return {layer: cached[layer].float() for layer in layers}
        preprocess = policy(self.loaded.preprocess, policy_name)
        x = preprocess(grid.image)[None].expand(len(grid.classes), -1, -1, -1)
        function = get_method(method, lr=self.lr)
        raw = function(self.loaded.model, x, torch.tensor(grid.classes), layers=list(layers))
        maps = {layer: m.detach().float().cpu() for layer, m in raw.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({layer: m.half() for layer, m in maps.items()}, path)
        return maps


def final_map(maps: dict[str, Tensor], candidate: Candidate, height: int, width: int) -> Tensor:
    """The (N, 1, H, W) map ``normgrad explain`` writes for this candidate (``_one_map`` of the CLI)."""
    chosen = {layer: maps[layer] for layer in candidate.layers}
    if candidate.combine == "none":
        (only,) = chosen.values()
        return ng.images.to_original_size(only, width, height)
    return ng.combine(chosen, size=(height, width), mode=candidate.combine, weights=candidate.weights)


class _FullSize:
    """:func:`final_map` for many candidates of one grid: each layer is upsampled and normalised once.

    The same steps as :func:`normgrad.combine` (``normalize(upsample(m))``,
    then the product / weighted geometric mean / weighted sum), shared.
    """

    def __init__(self, maps: dict[tuple[str, str], dict[str, Tensor]], height: int, width: int) -> None:
        self.maps, self.size, self.done = maps, (height, width), {}

    def layer(self, policy: str, method: str, layer: str) -> Tensor:
        key = (policy, method, layer)
        if key not in self.done:
            self.done[key] = ng.normalize(ng.upsample(self.maps[(policy, method)][layer].float(), self.size))
        return self.done[key]

    def __call__(self, c: Candidate) -> Tensor:
        if c.combine == "none":
            return final_map(self.maps[(c.policy, c.method)], c, *self.size)
        normalized = [self.layer(c.policy, method, layer) for method, layer in c.parts()]
        weights = [w / sum(c.weights) for w in c.weights] if c.weights else [1 / len(normalized)] * len(normalized)
        if c.combine == "product":
            return torch.stack(normalized).prod(0)
        if c.combine == "geometric":
            return torch.stack([m.pow(w) for m, w in zip(normalized, weights)]).prod(0)
        return torch.stack([m * w for m, w in zip(normalized, weights)]).sum(0)


def score(
    specs: list[dict],
    paths: dict[str, str],
    candidates: list[Candidate],
    cache: MapCache,
    progress: Callable[[Iterable], Iterable] = lambda items: items,
) -> list[dict]:
    """One record per (grid, cell, candidate): ``hit`` and ``mass`` on the map at the grid's full size."""
    needed: dict[tuple[str, str], set[str]] = {}
    for c in candidates:
        for method, layer in c.parts():
            needed.setdefault((c.policy, method), set()).add(layer)
    records = []
    for spec in progress(specs):
        grid = build(spec, paths)
        width, height = grid.image.size
        content = hashlib.sha256(json.dumps([spec["names"], spec["widths"], spec["heights"]]).encode()).hexdigest()[:12]
        maps = {key: cache.maps(f"{spec['id']}-{content}", grid, *key, tuple(sorted(layers))) for key, layers in needed.items()}
        full_size = _FullSize(maps, height, width)
        for candidate in candidates:
            records += cell_records(spec, grid, full_size(candidate), candidate.label, chance=True)
    return records


def summarise(records: list[dict], resamples: int = 2000) -> dict[str, dict]:
    """Per candidate: mean hit and mass with 95 % intervals (photos resampled), and the count of targets."""
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["candidate"], []).append(r)
    table = {}
    for label, rows in by.items():
        photos = [r["photo"] for r in rows]
        table[label] = {
            "hit": bootstrap_mean([float(r["hit"]) for r in rows], photos, resamples),
            "mass": bootstrap_mean([r["mass"] for r in rows], photos, resamples),
            "targets": len(rows),
            "photos": len(set(photos)),
        }
    return table


def paired_difference(records: list[dict], a: str, b: str, metric: str, resamples: int = 2000) -> tuple[float, float, float]:
    """Mean of ``metric(a) − metric(b)`` over the same targets, with its 95 % interval (photos resampled)."""
    first = {(r["grid"], r["cell"]): r for r in records if r["candidate"] == a}
    second = {(r["grid"], r["cell"]): r for r in records if r["candidate"] == b}
    keys = [k for k in first if k in second]
    if not keys:
        raise NormGradError(f"no common targets for {a!r} and {b!r}")
    values = [float(first[k][metric]) - float(second[k][metric]) for k in keys]
    return bootstrap_mean(values, [first[k]["photo"] for k in keys], resamples)


def benchmark_photos(loaded: Any, cache_folder: Path, threshold: float = 0.3, photo_root: Path = PHOTO_ROOT) -> list[dict]:
    """The confident benchmark photos (cached in ``cache_folder/photos.json``)."""
    path = cache_folder / f"photos-{threshold:g}.json"
    if path.exists():
        return json.loads(path.read_text())
    files, missing = photo_files(photo_root)
    if missing:
        raise NormGradError(install_hint(missing))
    photos = confident_photos(loaded, files, threshold)
    cache_folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(photos, indent=0))
    return photos


def development_and_heldout(photos: list[dict], seed: int = 0) -> dict[str, list[dict]]:
    """Grid specs of the development and the held-out split (different photos)."""
    development, heldout = split(photos)
    return {
        "development": benchmark_grids(development, DEV_COUNTS, seed=seed),
        "held-out": benchmark_grids(heldout, HELDOUT_COUNTS, seed=seed + 1),
    }


def report_candidates(loaded: Any) -> list[Candidate]:
    """The headline comparison for any model, from its architecture: the new default, the old one, Grad-CAM."""
    defaults = defaults_for(loaded)
    stages = tuple(loaded.default_layers())
    native, keep = str(loaded.preprocess.size), f"keep<={defaults.preprocess.max_size or loaded.preprocess.size}"
    new = tuple(f"{defaults.methods[layer]}/{layer}" for layer in defaults.layers)
    return [
        Candidate("default", new, policy=keep),
        Candidate("default", new, policy=native),
        Candidate("normgrad", stages, policy=native),  # the default before issue 11
        Candidate("selective", stages, policy=native),
        Candidate("gradcam", stages[-1:], policy=native),
        Candidate("gradcam", stages[-1:], policy=keep),
        Candidate("gradcam", stages, policy=native),
    ]


def efficientnet_candidates() -> list[Candidate]:
    """The candidates measured on the embedded EfficientNet-Lite0 (stage outputs ``blocks.1``…``blocks.6``, ``bn2``)."""
    b1, b2, b3, b4, b5, b6, head = "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6", "bn2"
    singles = (b1, b2, b3, b4, b5, b6, head)
    products = [
        (b1, b2, b4, head),  # today's default
        (b1, b2, b4),
        (b2, b4, head),
        (b4, head),
        (b4, b6),
        (b4, b5, b6),
        (b3, b4, b5, b6),
        (b2, b4, b6),
        (b4, b6, head),
        (b2, b4),
        (b5, head),
        (b6, head),
        (b4, b5, b6, head),
        (b2, b4, b6, head),
    ]
    weighted = [((b4, head), "geometric", (1, 2)), ((b4, head), "geometric", (1, 3)), ((b2, b4, head), "geometric", (1, 1, 2)),
                ((b4, b6), "geometric", (1, 2)), ((b4, b5, b6), "geometric", (1, 1, 2)), ((b4, head), "sum", None),
                ((b4, b6, head), "geometric", (1, 1, 2))]  # fmt: skip
    out = []
    for policy in ("224", "keep<=448"):
        for method in ("normgrad", "selective"):
            out += [Candidate(method, (layer,), policy=policy) for layer in singles]  # one layer, normalised: `--layers X`
            out += [Candidate(method, layers, policy=policy) for layers in products]
            out += [Candidate(method, layers, mode, weights, policy) for layers, mode, weights in weighted]
    out += [Candidate("gradcam", (layer,), policy="224") for layer in (b1, b2, b4, head)]
    out += [Candidate("gradcam", (b1, b2, b4, head), policy="224"), Candidate("gradcam", (head,), policy="keep<=448")]
    return out


def signed_candidates() -> list[Candidate]:
    """The framework's signed aggregates (``scaling+sum`` = gradient × activation: CAM at the layer before pooling), and mixes."""
    b2, b4, b5, b6, head = "blocks.2", "blocks.4", "blocks.5", "blocks.6", "bn2"
    out = []
    for method in ("scaling+sum", "scaling+max"):
        out += [Candidate(method, (layer,), policy="keep<=448") for layer in ("blocks.1", b2, "blocks.3", b4, b5, b6, head)]
        out += [Candidate(method, layers, policy="keep<=448") for layers in [(b4, head), (b4, b6), (b4, b6, head), (b4, b5, b6, head),
                                                                              (b2, b4, head), (b5, head), (b6, head)]]  # fmt: skip
    mixes = [
        ("selective/" + b4, "scaling+sum/" + head),
        ("selective/" + b4, "scaling+sum/" + b6),
        ("selective/" + b4, "selective/" + b6, "scaling+sum/" + head),
        ("selective/" + b4, "selective/" + b5, "selective/" + b6, "scaling+sum/" + head),
        ("selective/" + b2, "selective/" + b4, "scaling+sum/" + head),
        ("selective/" + b4, "scaling+sum/" + b6, "scaling+sum/" + head),
        ("normgrad/" + b4, "scaling+sum/" + head),
        ("normgrad/" + b4, "normgrad/" + b6, "scaling+sum/" + head),
        ("scaling+max/" + b4, "scaling+sum/" + head),
        ("selective/" + b4, "gradcam/" + head),
        ("selective/" + b4, "selective/" + b6, "gradcam/" + head),
    ]
    return out + [Candidate("mixed", layers, policy="keep<=448") for layers in mixes]


def refined_candidates() -> list[Candidate]:
    """Around the best mix: selective at stride 16 × gradient × activation (``scaling+sum``) at stride 32, and input policies."""
    fines = [("blocks.4",), ("blocks.3", "blocks.4"), ("blocks.2", "blocks.4"), ("blocks.4", "blocks.5"), ("blocks.2",)]
    deeps = [("blocks.6", "bn2"), ("blocks.5", "blocks.6", "bn2"), ("blocks.5", "bn2"), ("bn2",), ("blocks.6",)]
    out = []
    for fine in fines:
        for deep in deeps:
            for fine_method in ("selective", "normgrad"):
                if fine_method == "normgrad" and fine != ("blocks.4",):
                    continue
                layers = tuple(f"{fine_method}/{layer}" for layer in fine) + tuple(f"scaling+sum/{layer}" for layer in deep)
                out.append(Candidate("mixed", layers, policy="keep<=448"))
    best = ("selective/blocks.4", "scaling+sum/blocks.6", "scaling+sum/bn2")
    second = ("selective/blocks.4", "selective/blocks.5", "scaling+sum/blocks.6", "scaling+sum/bn2")
    for policy in ("224", "keep<=336", "keep<=672"):
        out += [Candidate("mixed", best, policy=policy), Candidate("mixed", second, policy=policy)]
        out += [
            Candidate("gradcam", ("bn2",), policy=policy),
            Candidate("selective", ("blocks.4", "blocks.5", "blocks.6", "bn2"), policy=policy),
        ]
    return out


def meta_candidates() -> list[Candidate]:
    """Meta-saliency candidates (2.5× the cost of a plain map): run on the grids separately."""
    b2, b4, b6, head = "blocks.2", "blocks.4", "blocks.6", "bn2"
    out = [Candidate("meta:selective", layers, policy="keep<=448") for layers in [(b4, head), (b4, b6), (b4, b6, head), (b2, b4, head)]]
    return out + [Candidate("meta:selective", (layer,), policy="keep<=448") for layer in (b4, b6, head)]


CANDIDATE_SETS = {"main": efficientnet_candidates, "signed": signed_candidates, "refined": refined_candidates, "meta": meta_candidates}


def user_photos(loaded: Any, paths: list[Path], threshold: float) -> list[dict]:
    """Benchmark records for your own photos (all of kind ``scene``), the confident ones."""
    from normgrad.evaluation.benchmark_photos import PhotoFile

    files = [PhotoFile("yours", Path(p), "scene") for p in paths]
    return confident_photos(loaded, files, threshold)


def grids_for(photos: list[dict], split_name: str, seed: int = 0) -> list[dict]:
    """The grid specs of a split (``development``, ``held-out``, or ``all`` photos with the development counts).

    Layouts that need more classes than the photos have are left out.
    """
    if split_name in ("development", "held-out"):
        return development_and_heldout(photos, seed)[split_name]
    distinct = len({p["class"] for p in photos})
    mixed_kinds = len({p["kind"] for p in photos}) > 1  # else "2x2 scenes" would repeat "2x2"
    counts = {
        layout.name: DEV_COUNTS[layout.name]
        for layout in LAYOUTS
        if layout.rows * layout.cols <= distinct and (layout.kinds != ("scene",) or mixed_kinds)
    }
    if not counts:
        raise NormGradError(f"the grid benchmark needs confident photos of at least 4 different classes; found {distinct}")
    return benchmark_grids(photos, counts, seed=seed)


def table(summary: dict[str, dict]) -> str:
    """A markdown table: candidate, hit and mass with their 95 % intervals."""
    lines = ["| candidate | argmax in cell (95 % CI) | mass in cell (95 % CI) | targets |", "|---|---:|---:|---:|"]
    for label, row in summary.items():
        (hit, hit_low, hit_high), (mass, mass_low, mass_high) = row["hit"], row["mass"]
        lines.append(
            f"| {label} | {hit:.3f} [{hit_low:.3f}, {hit_high:.3f}] | {mass:.3f} [{mass_low:.3f}, {mass_high:.3f}] | {row['targets']} |"
        )
    return "\n".join(lines)


def write_docs(cache: Path, out: Path, resamples: int = 2000) -> Path:
    """``out/grid-benchmark.md`` and ``.json``: every candidate's hit and mass (both splits), paired differences, by layout.

    Reads the records that ``--set main|signed|refined|report`` wrote into ``cache``.
    """
    splits: dict[str, list[dict]] = {}
    for name in ("development", "held-out"):
        splits[name] = []
        for path in sorted(cache.glob(f"records-{name}-*.json")):
            splits[name] += json.loads(path.read_text())
    if not splits["development"]:
        raise NormGradError(f"no records in {cache}; run `python -m normgrad.evaluation.grid_benchmark --set main` first")
    summaries = {name: summarise(records, resamples) for name, records in splits.items() if records}
    chosen = "mixed [selective/blocks.4, scaling+sum/blocks.6, scaling+sum/bn2] product @keep<=448"
    rivals = [
        "gradcam [bn2] @keep<=448",
        "gradcam [bn2] @224",
        "mixed [selective/blocks.4, selective/blocks.5, scaling+sum/blocks.6, scaling+sum/bn2] product @keep<=448",
        "selective [blocks.4, blocks.5, blocks.6, bn2] product @keep<=448",
        "normgrad [blocks.1, blocks.2, blocks.4, bn2] product @224",
    ]
    lines = ["# Grid benchmark: every candidate", ""]
    for name, summary in summaries.items():
        rows = sorted(summary.items(), key=lambda kv: -(kv[1]["hit"][0] + kv[1]["mass"][0]))
        photos = max(row["photos"] for row in summary.values())
        lines += [f"## {name} ({photos} photos)", "", table(dict(rows)), ""]
    lines += ["## Paired differences: the chosen default minus a rival (95 % intervals, photos resampled)", ""]
    lines += ["| split | rival | Δ hit | Δ mass |", "|---|---|---:|---:|"]
    for name, records in splits.items():
        present = {r["candidate"] for r in records}
        for rival in rivals:
            if chosen in present and rival in present:
                hit = paired_difference(records, chosen, rival, "hit", resamples)
                mass = paired_difference(records, chosen, rival, "mass", resamples)
                lines.append(
                    f"| {name} | {rival} | {hit[0]:+.3f} [{hit[1]:+.3f}, {hit[2]:+.3f}] | {mass[0]:+.3f} [{mass[1]:+.3f}, {mass[2]:+.3f}] |"
                )
    lines += [
        "",
        "## By layout (chosen default and references)",
        "",
        "| split | layout | candidate | hit | mass |",
        "|---|---|---|---:|---:|",
    ]
    for name, records in splits.items():
        for layout in [layout.name for layout in LAYOUTS]:
            for label in [chosen, *rivals[:2], rivals[-1]]:
                rows = [r for r in records if r["layout"] == layout and r["candidate"] == label]
                if rows:
                    hit = sum(r["hit"] for r in rows) / len(rows)
                    mass = sum(r["mass"] for r in rows) / len(rows)
                    lines.append(f"| {name} | {layout} | {label} | {hit:.3f} | {mass:.3f} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid-benchmark.json").write_text(json.dumps(summaries, indent=1))
    path = out / "grid-benchmark.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    import argparse

    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="development", choices=["development", "held-out"])
    parser.add_argument("--cache", type=Path, default=PHOTO_ROOT / "cache")
    parser.add_argument("--set", default="main", choices=[*CANDIDATE_SETS, "report"], help="which candidates")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--docs", type=Path, default=None, help="only write DOCS/grid-benchmark.md from the cached records")
    args = parser.parse_args(argv)
    if args.docs:
        print(f"wrote {write_docs(args.cache, args.docs)}")
        return
    loaded = ng.models.load()
    photos = benchmark_photos(loaded, args.cache)
    specs = grids_for(photos, args.split)
    paths = {p["name"]: p["path"] for p in photos}
    candidates = report_candidates(loaded) if args.set == "report" else CANDIDATE_SETS[args.set]()
    records = score(specs, paths, candidates, MapCache(loaded, args.cache / "maps"), progress=lambda items: tqdm(items, mininterval=30))
    out = args.out or args.cache / f"records-{args.split}-{args.set}.json"
    out.write_text(json.dumps(records))
    print(table(summarise(records)))


if __name__ == "__main__":
    main()
