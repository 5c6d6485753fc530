"""Synthetic photos with known boxes, and a small torchvision detector trained on them in about a minute on a CPU.

Each 96 × 96 photo has a smooth grey background with pixel noise, two
distractor discs (blue, not a class) and one to three non-overlapping
filled rectangles (14–32 px a side) of class 1 (red) or class 2 (green),
with jittered colours.  The ground truth of every rectangle is its box, so
a map that explains a detection should lie on the detection's box.

The detector is torchvision's FCOS (a one-stage detector: a detection's
score is read at one location of one FPN level, through the head's stacked
3 × 3 convolutions — its gradient is not confined to the box by
construction, as a two-stage detector's RoIAlign would make it) on a small
GroupNorm CNN with an FPN (levels at strides 8–64), resizing 96 px photos
to 112 px and padding them to 128 — so the maps also test the mapping back
to the photo.  Everything is seeded: the same photos and the same weights
on every run.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

PHOTO = 96
CLASSES = ("background", "red box", "green box")
COLOURS = {1: (0.85, 0.15, 0.1), 2: (0.15, 0.75, 0.2)}


@dataclass(frozen=True)
class BoxScene:
    """One photo (3, H, W) in [0, 1] and its objects: boxes (K, 4) x0 y0 x1 y1 in pixels, labels (K,)."""

    photo: Tensor
    boxes: Tensor
    labels: Tensor


def make_scene(generator: torch.Generator, size: int = PHOTO) -> BoxScene:
    """One seeded photo with 1–3 boxes (see the module doc)."""
    coarse = torch.rand(1, 1, 4, 4, generator=generator)
    background = 0.35 + 0.3 * nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]
    photo = background.expand(3, size, size).clone()
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for _ in range(2):  # distractors: salient, but not a class
        centre = torch.randint(8, size - 8, (2,), generator=generator)
        radius = int(torch.randint(5, 10, (1,), generator=generator))
        disc = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
        photo[:, disc] = torch.tensor([0.2, 0.3, 0.85])[:, None]
    boxes: list[list[float]] = []
    labels: list[int] = []
    count = int(torch.randint(1, 4, (1,), generator=generator))
    for _ in range(40):  # rejection sampling: boxes do not overlap (a 2 px gap)
        if len(boxes) == count:
            break
        width, height = (int(v) for v in torch.randint(14, 33, (2,), generator=generator))
        x0 = int(torch.randint(0, size - width + 1, (1,), generator=generator))
        y0 = int(torch.randint(0, size - height + 1, (1,), generator=generator))
        box = [x0, y0, x0 + width, y0 + height]
        if any(box[0] < b[2] + 2 and b[0] < box[2] + 2 and box[1] < b[3] + 2 and b[1] < box[3] + 2 for b in boxes):
            continue
        label = int(torch.randint(1, 3, (1,), generator=generator))
        jitter = 0.1 * (torch.rand(3, generator=generator) - 0.5)
        photo[:, y0 : y0 + height, x0 : x0 + width] = (torch.tensor(COLOURS[label]) + jitter)[:, None, None]
        boxes.append([float(v) for v in box])
        labels.append(label)
    photo = (photo + 0.04 * torch.randn(photo.shape, generator=generator)).clamp(0, 1)
    return BoxScene(photo, torch.tensor(boxes), torch.tensor(labels, dtype=torch.int64))


def scenes(count: int, seed: int) -> list[BoxScene]:
    generator = torch.Generator().manual_seed(seed)
    return [make_scene(generator) for _ in range(count)]


def _block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride=2, padding=1, bias=False),
        nn.GroupNorm(8, outputs),
        nn.ReLU(inplace=True),
        nn.Conv2d(outputs, outputs, 3, padding=1, bias=False),
        nn.GroupNorm(8, outputs),
        nn.ReLU(inplace=True),
    )


def _last_level_p6(channels: int) -> nn.Module:
    """One extra FPN level, P6 = a stride-2 3 × 3 convolution of P5 (torchvision's ``LastLevelP6P7`` without P7: at these
    sizes P7 would be 1 × 1, where the head's ``GroupNorm(32, 32)`` has one value per group and refuses a single image)."""
    from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

    class LastLevelP6(ExtraFPNBlock):
        def __init__(self) -> None:
            super().__init__()
            self.p6 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

        def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
            return [*results, self.p6(results[-1])], [*names, "p6"]

    return LastLevelP6()


def small_fcos(seed: int = 0) -> nn.Module:
    """torchvision's FCOS on a small GroupNorm CNN with an FPN of 32 channels (P3–P6), a head of two convolutions per
    branch; 3 classes; 96 px photos seen at 112 (padded to 128).

    FCOS assigns a box to the level whose range holds its largest centre-to-side distance (``4·size .. 8·size``);
    location sizes 4, 8, 16, 32 spread these 14–32 px boxes over P3 and P4.
    """
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.fcos import FCOSHead

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = nn.Sequential(
            OrderedDict(
                stem=_block(3, 16),  # stride 2
                layer1=_block(16, 32),  # 4
                layer2=_block(32, 48),  # 8
                layer3=_block(48, 64),  # 16
                layer4=_block(64, 64),  # 32
            )
        )
        backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [48, 64, 64], 32, extra_blocks=_last_level_p6(32))
        anchors = AnchorGenerator(((4,), (8,), (16,), (32,)), ((1.0,),) * 4)
        head = FCOSHead(32, 1, len(CLASSES), num_convs=2)
        return FCOS(
            backbone, len(CLASSES), min_size=112, max_size=112, score_thresh=0.2, detections_per_img=10, anchor_generator=anchors, head=head
        )


def train(
    model: nn.Module, steps: int = 300, batch: int = 8, seed: int = 1, lr: float = 2e-3, progress: Callable[[int], None] | None = None
) -> list[float]:
    """Train ``model`` on fresh synthetic scenes (Adam, cosine schedule); returns the losses. Leaves the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    losses = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps):
            drawn = [make_scene(generator) for _ in range(batch)]
            loss_parts = model([s.photo for s in drawn], [{"boxes": s.boxes, "labels": s.labels} for s in drawn])
            loss = sum(loss_parts.values())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step)
    model.eval()
    return losses


def trained_fcos(steps: int = 300, seed: int = 0) -> nn.Module:
    """:func:`small_fcos` trained for ``steps`` steps (deterministic: the same weights each run on one machine)."""
    model = small_fcos(seed)
    with torch.random.fork_rng(devices=[]):
        train(model, steps=steps)
    return model


__all__ = ["CLASSES", "PHOTO", "BoxScene", "make_scene", "scenes", "small_fcos", "train", "trained_fcos"]
