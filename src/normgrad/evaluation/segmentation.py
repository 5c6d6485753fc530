"""A synthetic segmentation task whose right answers are known: does the map of a region peak inside its object?

Images (64 × 64) hold two objects of different classes — a square (class
1), a disk (class 2), a cross (class 3), each of its own noisy colour — on
a textured grey background (class 0).  A small fully convolutional
segmenter (stride 4, dilated context, torchvision-style ``{"out": ...}``
output upsampled to the input) is trained for a few hundred steps on
fresh images with their masks.

Each test object is explained with the region target of its class's
*predicted* region (:class:`~normgrad.segmentation.Region` without a box:
``J = Σ_{p: argmax = c} ŝ_c(p)``), as ``normgrad explain --task segment
--target CLASS`` does.  The map (at the input's resolution) must peak
inside the object's true mask (**hit**) and put its mass there (**mass**:
the share of the map's positive mass inside the mask), although the image
holds another object of another class.  Methods: NormGrad at the stride-2
and stride-4 layers and their product, Grad-CAM (Captum) at the stride-4
layer, and uniform random maps (hit rate = the mask's share of the image).
Intervals: 95 % percentile bootstrap over images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normgrad.baselines import gradcam
from normgrad.combine import combine, upsample
from normgrad.errors import NormGradError
from normgrad.evaluation.grid import bootstrap_mean
from normgrad.methods import normgrad
from normgrad.segmentation import Region

SIZE = 64
CLASSES = ("background", "square", "disk", "cross")
COLOURS = {1: (0.85, 0.25, 0.2), 2: (0.2, 0.7, 0.3), 3: (0.25, 0.35, 0.9)}
LAYERS = ("features.3", "features.9")  # stride 2 and stride 4
METHODS = ("normgrad (stride 2)", "normgrad (stride 4)", "normgrad (product)", "gradcam (stride 4)", "random")


class SyntheticSegmenter(nn.Module):
    """A small FCN: stride 4, two dilated convolutions for context; ``{"out": logits upsampled to the input}`` as torchvision's."""

    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),  # features.3: stride 2
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 48, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(48, 48, 3, padding=2, dilation=2),
            nn.ReLU(),  # features.9: stride 4
        )
        self.classifier = nn.Conv2d(48, classes, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.classifier(self.features(x))
        return {"out": F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def synthetic_batch(count: int, rng: np.random.Generator) -> tuple[Tensor, Tensor, list[list[tuple[int, np.ndarray]]]]:
    """``count`` images (N, 3, 64, 64), their label maps (N, 64, 64) and, per image, its objects ``(class, mask)``."""
    images = np.empty((count, 3, SIZE, SIZE), np.float32)
    labels = np.zeros((count, SIZE, SIZE), np.int64)
    objects: list[list[tuple[int, np.ndarray]]] = []
    rows, cols = np.mgrid[:SIZE, :SIZE]
    for n in range(count):
        coarse = rng.normal(0.5, 0.12, (1, 8, 8)).astype(np.float32)
        images[n] = np.kron(coarse, np.ones((1, 8, 8), np.float32)) + rng.normal(0, 0.08, (3, SIZE, SIZE))
        classes = rng.choice([1, 2, 3], size=2, replace=False)
        placed: list[tuple[int, np.ndarray]] = []
        for cls in classes:
            for _ in range(50):  # a position that does not touch the other object
                radius = int(rng.integers(6, 11))
                cy, cx = (int(v) for v in rng.integers(radius, SIZE - radius, 2))
                mask = _shape(int(cls), rows - cy, cols - cx, radius)
                if not any(_near(mask, other) for _, other in placed):
                    break
            colour = np.array(COLOURS[int(cls)], np.float32)[:, None]
            images[n][:, mask] = colour + rng.normal(0, 0.06, (3, int(mask.sum())))
            labels[n][mask] = cls
            placed.append((int(cls), mask))
        objects.append(placed)
    mean, std = 0.5, 0.25
    return (torch.from_numpy(images) - mean) / std, torch.from_numpy(labels), objects


def _shape(cls: int, dy: np.ndarray, dx: np.ndarray, radius: int) -> np.ndarray:
    if cls == 1:
        return (np.abs(dy) < radius * 0.8) & (np.abs(dx) < radius * 0.8)
    if cls == 2:
        return dy**2 + dx**2 < radius**2
    return ((np.abs(dy) < radius) & (np.abs(dx) < radius * 0.3)) | ((np.abs(dx) < radius) & (np.abs(dy) < radius * 0.3))


def _near(mask: np.ndarray, other: np.ndarray, gap: int = 3) -> bool:
    grown = F.max_pool2d(torch.from_numpy(other[None, None].astype(np.float32)), 2 * gap + 1, 1, gap)[0, 0].numpy() > 0
    return bool((mask & grown).any())


def train(steps: int, batch: int = 16, seed: int = 0, lr: float = 3e-3, progress: Any = None) -> SyntheticSegmenter:
    """The segmenter trained ``steps`` Adam steps on fresh synthetic batches (pixel-wise cross-entropy)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SyntheticSegmenter()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        images, labels, _ = synthetic_batch(batch, rng)
        loss = F.cross_entropy(model(images)["out"], labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if progress is not None:
            progress(float(loss))
    return model.eval()


@dataclass(frozen=True)
class Record:
    """One explained object: its image, class, the method, and whether the map's peak / how much of its mass lies on it."""

    image: int
    cls: int
    method: str
    hit: bool
    mass: float


def method_maps(model: nn.Module, x: Tensor, cls: int, seed: int) -> dict[str, Tensor]:
    """Every compared method's (1, 1, 64, 64) map of the class's predicted region."""
    region = Region(cls)
    layer_maps = normgrad(model, x, region, layers=list(LAYERS))
    size = (SIZE, SIZE)
    return {
        "normgrad (stride 2)": upsample(layer_maps[LAYERS[0]], size),
        "normgrad (stride 4)": upsample(layer_maps[LAYERS[1]], size),
        "normgrad (product)": combine(layer_maps, size=size, mode="product"),
        "gradcam (stride 4)": upsample(gradcam(model, x, region, layers=[LAYERS[1]])[LAYERS[1]], size),
        "random": torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(seed)),
    }


def evaluate(model: nn.Module, images: int, seed: int = 1, progress: Any = None) -> list[Record]:
    """Hit and mass of every method for both objects of ``images`` fresh test images (objects the model misses skipped)."""
    rng = np.random.default_rng(seed)
    x, _, objects = synthetic_batch(images, rng)
    records: list[Record] = []
    for n in range(images):
        with torch.no_grad():
            predicted = model(x[n : n + 1])["out"].argmax(1)[0].numpy()
        for cls, mask in objects[n]:
            if not (predicted == cls).any():
                continue  # the class is predicted nowhere: there is no region to explain
            for method, saliency_map in method_maps(model, x[n : n + 1], cls, seed=n * 10 + cls).items():
                values = saliency_map[0, 0].double().numpy()
                positive = np.clip(values, 0, None)
                peak = np.unravel_index(int(values.argmax()), values.shape)
                mass = float(positive[mask].sum() / positive.sum()) if positive.sum() > 0 else 0.0
                records.append(Record(n, cls, method, bool(mask[peak]), mass))
        if progress is not None:
            progress()
    return records


def summarise(records: list[Record]) -> dict[str, dict[str, float]]:
    """Per method: hit rate and mean mass, each with its 95 % bootstrap interval over images; and the object count."""
    if not records:
        raise NormGradError("no object was predicted by the segmenter: train it longer")
    table: dict[str, dict[str, float]] = {}
    for method in METHODS:
        chosen = [r for r in records if r.method == method]
        images = [r.image for r in chosen]
        hit, hit_low, hit_high = bootstrap_mean([float(r.hit) for r in chosen], images)
        mass, mass_low, mass_high = bootstrap_mean([r.mass for r in chosen], images)
        table[method] = {"hit": hit, "hit_low": hit_low, "hit_high": hit_high, "mass": mass, "mass_low": mass_low, "mass_high": mass_high}
        table[method]["objects"] = len(chosen)
    return table


def pixel_accuracy(model: nn.Module, images: int = 32, seed: int = 2) -> float:
    """The trained segmenter's pixel accuracy on fresh images."""
    x, labels, _ = synthetic_batch(images, np.random.default_rng(seed))
    with torch.no_grad():
        return float((model(x)["out"].argmax(1) == labels).float().mean())


__all__ = ["CLASSES", "LAYERS", "METHODS", "Record", "SyntheticSegmenter", "evaluate", "pixel_accuracy", "summarise", "synthetic_batch"]
__all__ += ["train"]
