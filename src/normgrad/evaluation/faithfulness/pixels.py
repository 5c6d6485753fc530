"""Model inputs ↔ pixels, ranking pixels by a map, and the class probability: what ROAD and insertion/deletion share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normgrad.errors import NormGradError


@dataclass(frozen=True)
class PixelSpace:
    """The model's normalisation: ``input = (pixel − mean) / std`` per channel (pixels in [0, 1]); identity by default."""

    mean: Sequence[float] = (0.0,)
    std: Sequence[float] = (1.0,)

    def _view(self, values: Sequence[float], x: Tensor) -> Tensor:
        out = torch.as_tensor(list(values), dtype=x.dtype, device=x.device)
        if out.numel() not in (1, x.shape[1]):
            raise NormGradError(f"{out.numel()} normalisation values for {x.shape[1]} channels")
        return out.view(1, -1, 1, 1)

    def to_pixels(self, inputs: Tensor) -> Tensor:
        return inputs * self._view(self.std, inputs) + self._view(self.mean, inputs)

    def to_inputs(self, pixels: Tensor) -> Tensor:
        return (pixels - self._view(self.mean, pixels)) / self._view(self.std, pixels)


IDENTITY = PixelSpace()


def check_batch(inputs: Tensor, maps: Tensor, targets: Tensor) -> None:
    """Inputs (N, C, H, W), maps (N, 1, H, W) finite, targets (N,) integers: one clear error otherwise."""
    if inputs.dim() != 4:
        raise NormGradError(f"inputs must have shape (N, C, H, W); got {tuple(inputs.shape)}")
    if maps.shape != (inputs.shape[0], 1, *inputs.shape[2:]):
        raise NormGradError(f"maps must have shape (N, 1, H, W) = {(inputs.shape[0], 1, *inputs.shape[2:])}; got {tuple(maps.shape)}")
    if not bool(torch.isfinite(maps).all()):
        raise NormGradError("a saliency map contains NaN or infinite values: cannot rank its pixels")
    if targets.shape != (inputs.shape[0],) or targets.dtype not in (torch.int64, torch.int32):
        raise NormGradError(f"targets must be N = {inputs.shape[0]} class indices; got {targets.dtype} {tuple(targets.shape)}")


def ranking(maps: Tensor, seed: int = 0) -> Tensor:
    """(N, H·W) pixel indices, most salient first; equal values in a seeded random order (the same for every method)."""
    flat = maps.detach().flatten(1).double().cpu()
    keys = torch.rand(flat.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    shuffled = keys.argsort(1)
    order = flat.gather(1, shuffled).argsort(dim=1, descending=True, stable=True)
    return shuffled.gather(1, order)


def first_pixels(order: Tensor, count: int, shape: tuple[int, int]) -> Tensor:
    """Bool (N, 1, H, W): the first ``count`` pixels of each ranking."""
    mask = torch.zeros(order.shape, dtype=torch.bool).scatter_(1, order[:, :count], True)
    return mask.view(order.shape[0], 1, *shape)


@torch.no_grad()
def class_probability(model: nn.Module, inputs: Tensor, targets: Tensor, batch_size: int = 64) -> Tensor:
    """softmax(model(inputs))[target] per image (N,), float64, in batches."""
    out = []
    for start in range(0, len(inputs), batch_size):
        logits = model(inputs[start : start + batch_size])
        out.append(F.softmax(logits.double(), 1).gather(1, targets[start : start + batch_size, None].to(logits.device))[:, 0].cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
