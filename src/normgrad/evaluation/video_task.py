"""A synthetic video task with a known answer: does a bright square appear, and where and when?

Every clip (3 × T × H × W, grey noise) holds a moving bright bar (a
distractor, in both classes); clips of class 1 also hold a bright square
that appears for :data:`SQUARE_FRAMES` consecutive frames at a random time
and place and moves 1 pixel a frame.  A tiny 3-D CNN trained for a few
seconds tells the classes apart only by the square, so a map of class 1
should peak on the square, in the frames where it is.

Scores per class-1 test clip, for maps upsampled to T × H × W:

* **hit**: the map's maximum lies on the square (within 1 pixel, in a frame where it is);
* **frame hit**: the maximum lies in a frame where the square is;
* **mass**: the share of the (min-max normalised) map's sum on the square's voxels.

Hit rates carry Wilson 95 % intervals, mass a normal 95 % interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FRAMES, SIZE, SQUARE, SQUARE_FRAMES = 8, 32, 5, 3


@dataclass
class Clips:
    """Clips (N, 3, T, H, W), labels (N,) and the square's voxels (N, T, H, W) (all False for class 0)."""

    clips: Tensor
    labels: Tensor
    masks: Tensor


def make_clips(count: int, seed: int) -> Clips:
    """``count`` clips, half of each class, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    clips = torch.randn(count, 1, FRAMES, SIZE, SIZE, generator=generator) * 0.3
    masks = torch.zeros(count, FRAMES, SIZE, SIZE, dtype=torch.bool)
    labels = torch.arange(count) % 2

    def pick(high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=generator))

    for i in range(count):
        row, col, vertical = pick(SIZE - 10), pick(SIZE - 2 - FRAMES), pick(2)
        for t in range(FRAMES):  # the distractor: a 2 × 10 bar moving one pixel a frame
            if vertical:
                clips[i, 0, t, row : row + 10, col + t : col + t + 2] += 1.5
            else:
                clips[i, 0, t, col + t : col + t + 2, row : row + 10] += 1.5
        if labels[i]:
            start, top, left = pick(FRAMES - SQUARE_FRAMES + 1), pick(SIZE - SQUARE), pick(SIZE - SQUARE - SQUARE_FRAMES)
            for t in range(start, start + SQUARE_FRAMES):
                x = left + t - start
                clips[i, 0, t, top : top + SQUARE, x : x + SQUARE] += 1.5
                masks[i, t, top : top + SQUARE, x : x + SQUARE] = True
    return Clips(clips.expand(-1, 3, -1, -1, -1).contiguous(), labels, masks)


def tiny_cnn() -> nn.Sequential:
    """Three 3×3×3 convolutions (the second halves the frame), a max over the clip, a linear head."""
    return nn.Sequential(
        nn.Conv3d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(16, 32, 3, stride=(1, 2, 2), padding=1),
        nn.ReLU(),
        nn.Conv3d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool3d(1),
        nn.Flatten(),
        nn.Linear(32, 2),
    )


def train(model: nn.Module, steps: int, seed: int = 0, batch: int = 32, progress: Callable[[int], None] | None = None) -> nn.Module:
    """Adam (lr 3e-3) on fresh clips each step; returns the model in eval mode."""
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        data = make_clips(batch, seed=10_000 + step)
        loss = F.cross_entropy(model(data.clips), data.labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if progress is not None:
            progress(step)
    return model.eval()


def accuracy(model: nn.Module, data: Clips) -> float:
    with torch.no_grad():
        return float((model(data.clips).argmax(1) == data.labels).float().mean())


@dataclass
class Scores:
    """Per-clip hits, frame hits and mass of one method."""

    hits: Tensor
    frame_hits: Tensor
    mass: Tensor

    def summary(self) -> dict[str, tuple[float, float, float]]:
        """``{score: (value, low, high)}``: Wilson intervals for the rates, normal ones for the mass."""
        mass_mean, mass_se = float(self.mass.mean()), float(self.mass.std() / math.sqrt(len(self.mass)))
        return {
            "hit": wilson(int(self.hits.sum()), len(self.hits)),
            "frame hit": wilson(int(self.frame_hits.sum()), len(self.frame_hits)),
            "mass": (mass_mean, mass_mean - 1.96 * mass_se, mass_mean + 1.96 * mass_se),
        }


def score(maps: Tensor, masks: Tensor) -> Scores:
    """Scores of maps (N, 1, t, h, w) (any resolution) against the square's voxels (N, T, H, W)."""
    full = F.interpolate(maps.float(), size=masks.shape[1:], mode="trilinear", align_corners=False)[:, 0]
    flat = full.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    normalised = ((flat - low) / (high - low).clamp_min(1e-12)).view_as(full)
    near = F.max_pool3d(masks[:, None].float(), (1, 3, 3), stride=1, padding=(0, 1, 1))[:, 0].bool()  # 1 pixel of slack, same frame
    peak = flat.argmax(1)
    hits = near.flatten(1).gather(1, peak[:, None])[:, 0]
    frames = peak // (masks.shape[2] * masks.shape[3])
    frame_hits = masks.flatten(2).any(2).gather(1, frames[:, None])[:, 0]
    mass = (normalised * masks).flatten(1).sum(1) / normalised.flatten(1).sum(1).clamp_min(1e-12)
    return Scores(hits.float(), frame_hits.float(), mass)


def wilson(successes: int, trials: int, z: float = 1.96) -> tuple[float, float, float]:
    """The rate and its Wilson score interval."""
    if trials == 0:
        return (float("nan"),) * 3  # type: ignore[return-value]
    rate = successes / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return rate, centre - half, centre + half


__all__ = ["Clips", "Scores", "accuracy", "make_clips", "score", "tiny_cnn", "train", "wilson"]
