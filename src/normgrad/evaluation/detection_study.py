"""Does the map of a detection lie on its box?  NormGrad vs Grad-CAM vs random on synthetic boxes.

    python -m normgrad.evaluation.detection_study [--quick] [--out docs/detection.json] [--figure docs/detection.png]

A small torchvision FCOS is trained on synthetic photos with known boxes
(:mod:`normgrad.evaluation.synthetic_boxes`, about 2 minutes on one CPU
thread), then run on held-out photos.  Every detection scoring at least
``min_score`` that is a true positive (IoU ≥ 0.5 with a ground-truth box of
its class) is explained — ``DetectionScore`` of that detection, maps at
every FPN level combined (``sum``, levels without gradient left out), on the
photo's pixel grid — by

* **NormGrad** (``‖g_u‖·‖a_u‖``, one pass for all levels);
* **Grad-CAM** (Captum's ``LayerGradCam`` at the same levels, same combination);
* **random** (uniform noise: the floor).

Per detection: **hit** — the map's first maximum lies inside the
ground-truth box (the pointing game at 0 px tolerance; a blank map's first
maximum is its top-left pixel); **mass** — the share of the map's total
inside the box (the energy-based pointing game).  Hit rates with 95 %
Wilson intervals, masses and the paired differences NormGrad − Grad-CAM
with 95 % bootstrap intervals over detections; and the share of blank
(constant) maps.  The box covers on average ``area`` of the photo:
random's expected hit rate and mass.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from normgrad import detection as det
from normgrad.evaluation import synthetic_boxes
from normgrad.evaluation.training.stats import bootstrap

METHODS = ("normgrad", "gradcam", "random")


def inside(box: Tensor, height: int, width: int) -> Tensor:
    """(H, W) bool: the pixels whose centres lie inside ``box`` (x0, y0, x1, y1 in pixels)."""
    centres_y = torch.arange(height, dtype=torch.float64) + 0.5
    centres_x = torch.arange(width, dtype=torch.float64) + 0.5
    x0, y0, x1, y1 = (float(v) for v in box)
    return ((centres_y >= y0) & (centres_y < y1))[:, None] & ((centres_x >= x0) & (centres_x < x1))[None, :]


def hit_and_mass(saliency_map: Tensor, box: Tensor) -> tuple[float, float]:
    """(1.0 if the first maximum is inside ``box`` else 0.0, the share of the non-negative map inside ``box``)."""
    plane = saliency_map.reshape(saliency_map.shape[-2:]).double().clamp_min(0)
    region = inside(box, *plane.shape)
    peak = int(plane.flatten().argmax())
    total = float(plane.sum())
    return float(region.flatten()[peak]), (float(plane[region].sum()) / total if total > 0 else 0.0)


def true_positives(found: dict[str, Tensor], boxes: Tensor, labels: Tensor, min_score: float) -> list[tuple[int, int]]:
    """(detection index, ground-truth index) of the detections scoring ≥ ``min_score`` that match a box of their class (IoU ≥ 0.5)."""
    pairs = []
    for index in torch.nonzero(found["scores"] >= min_score).flatten().tolist():
        overlap = det.box_iou(boxes.double(), found["boxes"][index].double())
        overlap[labels != found["labels"][index]] = -1
        best = int(overlap.argmax()) if len(overlap) else -1
        if best >= 0 and float(overlap[best]) >= 0.5:
            pairs.append((index, best))
    return pairs


def explain_photo(model: nn.Module, photo: Tensor, detections: Tensor, labels: Tensor, seed: int) -> dict[str, Tensor]:
    """Each method's combined (K, 1, H, W) maps of the K ``detections`` of one photo (a batch of K copies: one pass)."""
    batch = photo[None].expand(len(detections), -1, -1, -1).contiguous()
    target = det.DetectionScore(detections, labels, min_iou=0.9)
    generator = torch.Generator().manual_seed(seed)
    return {
        "normgrad": det.saliency(model, batch, target).combined(),
        "gradcam": det.gradcam(model, batch, target).combined(),
        "random": torch.rand(len(detections), 1, *photo.shape[-2:], generator=generator),
    }


def run(steps: int = 300, photos: int = 60, min_score: float = 0.3, seed: int = 123, progress: bool = True) -> dict[str, Any]:
    """The study (see the module doc): records per detection and the summary."""
    from tqdm import tqdm

    model = synthetic_boxes.small_fcos()
    with tqdm(total=steps, desc="training FCOS", disable=not progress, mininterval=5) as bar:
        losses = synthetic_boxes.train(model, steps=steps, progress=lambda step: bar.update(1))
    scenes = synthetic_boxes.scenes(photos, seed)
    records = []
    for number, scene in enumerate(tqdm(scenes, desc="explaining", disable=not progress, mininterval=5)):
        found = det.detect(model, scene.photo[None])[0]
        pairs = true_positives(found, scene.boxes, scene.labels, min_score)
        if not pairs:
            continue
        chosen = [index for index, _ in pairs]
        maps = explain_photo(model, scene.photo, found["boxes"][chosen], found["labels"][chosen], seed + number)
        for k, (index, truth) in enumerate(pairs):
            box = scene.boxes[truth]
            record: dict[str, Any] = {"photo": number, "label": int(found["labels"][index]), "score": float(found["scores"][index])}
            record["area"] = float(inside(box, *scene.photo.shape[-2:]).double().mean())
            for method in METHODS:
                record[f"{method}_hit"], record[f"{method}_mass"] = hit_and_mass(maps[method][k], box)
                record[f"{method}_blank"] = float(maps[method][k].max() == maps[method][k].min())
            records.append(record)
    return {"steps": steps, "final_loss": float(np.mean(losses[-25:])), "photos": photos, "records": records, "summary": summarise(records)}


def wilson(hits: int, n: int, z: float = 1.959964) -> dict[str, float]:
    """A hit rate with its 95 % Wilson score interval (right at 0 and 1, where a bootstrap collapses to a point)."""
    rate = hits / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"value": rate, "low": max(0.0, centre - half), "high": min(1.0, centre + half)}


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Hit rates with Wilson intervals, masses with 95 % bootstrap intervals over detections, the paired NormGrad − Grad-CAM
    differences (bootstrap), and the share of blank (constant) maps per method."""
    if not records:
        return {"detections": 0}
    column = {key: np.array([r[key] for r in records], dtype=np.float64) for key in records[0] if key != "photo"}
    summary: dict[str, Any] = {"detections": len(records), "area": bootstrap(np.mean, column["area"]).as_dict()}
    for method in METHODS:
        summary[f"{method}_blank"] = float(column[f"{method}_blank"].mean())
    for metric in ("hit", "mass"):
        for method in METHODS:
            values = column[f"{method}_{metric}"]
            interval = wilson(int(values.sum()), len(values)) if metric == "hit" else bootstrap(np.mean, values).as_dict()
            summary[f"{method}_{metric}"] = interval
        difference = column[f"normgrad_{metric}"] - column[f"gradcam_{metric}"]
        summary[f"normgrad_minus_gradcam_{metric}"] = bootstrap(np.mean, difference).as_dict()
    return summary


def markdown(result: dict[str, Any]) -> str:
    """The summary as a table."""
    summary = result["summary"]

    def cell(key: str) -> str:
        value = summary[key]
        return f"{value['value']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"

    lines = [
        f"{summary['detections']} true-positive detections on {result['photos']} held-out photos (FCOS trained {result['steps']} "
        f"steps, final loss {result['final_loss']:.2f}); the boxes cover {cell('area')} of the photo on average.",
        "",
        "| method | hit rate | mass in box | blank maps |",
        "|---|---|---|---|",
        *(f"| {method} | {cell(f'{method}_hit')} | {cell(f'{method}_mass')} | {summary[f'{method}_blank']:.3f} |" for method in METHODS),
        f"| NormGrad − Grad-CAM (paired) | {cell('normgrad_minus_gradcam_hit')} | {cell('normgrad_minus_gradcam_mass')} | |",
    ]
    return "\n".join(lines)


def figure(path: Path, steps: int = 300, seed: int = 7) -> None:
    """A held-out photo with its detections, and the NormGrad and Grad-CAM map of each (the README's figure)."""
    from PIL import Image, ImageDraw
    from tqdm import tqdm

    from normgrad.detection.drawing import box_caption, draw_boxes
    from normgrad.viz import overlay

    model = synthetic_boxes.small_fcos()
    with tqdm(total=steps, desc="training FCOS", mininterval=5) as bar:
        synthetic_boxes.train(model, steps=steps, progress=lambda step: bar.update(1))
    scene = next(s for s in synthetic_boxes.scenes(40, seed) if len(s.boxes) >= 2)
    found = det.detect(model, scene.photo[None])[0]
    keep = found["scores"] >= 0.3
    boxes, labels, scores = found["boxes"][keep], found["labels"][keep], found["scores"][keep]
    maps = explain_photo(model, scene.photo, boxes, labels, seed)
    photo = Image.fromarray((scene.photo.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    names = [synthetic_boxes.CLASSES[int(label)] for label in labels]
    captions = [f"{k + 1} {box_caption(name, float(score))}" for k, (name, score) in enumerate(zip(names, scores))]
    scale = 3
    tiles = [draw_boxes(photo.resize((photo.width * scale, photo.height * scale)), boxes * scale, captions)]
    for method, title in (("normgrad", "NormGrad"), ("gradcam", "Grad-CAM")):
        for k in range(len(boxes)):
            tile = overlay(photo, maps[method][k]).resize((photo.width * scale, photo.height * scale))
            tile = draw_boxes(tile, boxes * scale, captions, highlight=k)
            ImageDraw.Draw(tile).text((4, tile.height - 14), f"{title}: detection {k + 1}", fill=(255, 255, 255))
            tiles.append(tile)
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), tiles[0].height), "white")
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + 4
    sheet.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normgrad.evaluation.detection_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="150 training steps and 12 photos (about a minute)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--out", type=Path, help="write the records and the summary as JSON")
    parser.add_argument("--figure", type=Path, help="write the README's figure (a photo, its detections and their maps) as PNG")
    args = parser.parse_args(argv)
    steps, photos = (150, 12) if args.quick else (args.steps, args.photos)
    if args.figure is not None:
        figure(args.figure, steps=steps)
        print(f"wrote {args.figure}")
        return 0
    result = run(steps=steps, photos=photos)
    print(markdown(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
