"""``ng.influence``: for each test image, its top proponents and opponents in a training set, with pixel maps.

Two passes over what is needed, never more:

1. **Scores**: every training image's example-level TracIn on every test
   image — one forward/backward per training batch and checkpoint, then one
   dot product of per-example gradients per pair (:meth:`TracIn.scores`).
2. **Maps**: only the ``top_k`` proponents (largest scores) and opponents
   (smallest) of each test image go through a second forward/backward, which
   splits their scores over their locations (:meth:`TracIn.maps`).

A pixel map is the sum over the chosen layers of each layer's signed map,
upsampled bilinearly to the input size and scaled by ``h·w / (H·W)``, so that
its sum stays (up to interpolation at the borders) the image's score.
:func:`self_influence` ranks the training images themselves by
``TracIn(z, z)`` — mislabelled and atypical images rank high — with maps of
the top ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from normgrad.engine.layers import Layers
from normgrad.errors import NormGradError
from normgrad.tracin.capture import Loss, cross_entropy
from normgrad.tracin.method import Checkpoint, TracIn

MAX_TOP_K = 100
Progress = Callable[[int, str], Any]  # (total, description) -> a tqdm-like object (update, close), or None


@dataclass
class Influence:
    """Per test image ``t``: ``proponents[t]`` / ``opponents[t]`` (k training indices), their scores and pixel maps.

    ``scores`` (T, N_train) holds every pair's example-level TracIn;
    ``*_maps`` are (T, k, 1, H, W), signed (proponent mass > 0).
    """

    layers: list[str]
    test_labels: Tensor
    scores: Tensor
    proponents: Tensor
    opponents: Tensor
    proponent_maps: Tensor
    opponent_maps: Tensor

    def proponent_scores(self) -> Tensor:
        return self.scores.gather(1, self.proponents)

    def opponent_scores(self) -> Tensor:
        return self.scores.gather(1, self.opponents)


@dataclass
class SelfInfluence:
    """``scores`` (N,) of every training image; ``top`` (k indices, highest first) with their maps (k, 1, H, W)."""

    layers: list[str]
    scores: Tensor
    top: Tensor
    maps: Tensor


def as_dataset(train: Dataset | tuple[Tensor, Tensor]) -> Dataset:
    """A training set: an ``(images, labels)`` pair of tensors, or a dataset of ``(image, label)`` items."""
    if isinstance(train, (tuple, list)) and len(train) == 2 and all(isinstance(t, Tensor) for t in train):
        images, labels = train
        if images.dim() != 4 or labels.shape != (len(images),):
            raise NormGradError(
                f"the training set must be images (N, C, H, W) and N labels; got {tuple(images.shape)}, {tuple(labels.shape)}"
            )
        return TensorDataset(images, labels)
    if isinstance(train, Dataset) and hasattr(train, "__len__"):
        return train
    raise NormGradError(
        f"the training set must be an (images, labels) pair of tensors or a sized Dataset of (image, label); got {type(train).__name__}"
    )


def _batches(dataset: Dataset, batch_size: int, progress: Progress | None, what: str):
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    bar = progress(len(dataset), what) if progress else None
    try:
        for start, (images, labels) in zip(range(0, len(dataset), batch_size), loader):
            yield start, images, labels
            if bar is not None:
                bar.update(len(labels))
    finally:
        if bar is not None:
            bar.close()


def pixel_map(maps: Mapping[str, Tensor], size: tuple[int, int]) -> Tensor:
    """Σ over layers of ``map_l`` (N, T, h, w) upsampled to ``size`` and scaled by ``h·w/(H·W)``: (N, T, H, W), about the same sum.

    Bilinear upsampling by an integer factor keeps the sum except near the borders (edge values are repeated).
    """
    total = None
    for layer_map in maps.values():
        scale = layer_map.shape[-2] * layer_map.shape[-1] / (size[0] * size[1])
        up = F.interpolate(layer_map.float(), size=size, mode="bilinear", align_corners=False) * scale
        total = up if total is None else total + up
    assert total is not None
    return total


def _check_top_k(top_k: int, available: int, batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise NormGradError(f"batch_size must be a positive integer; got {batch_size!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise NormGradError(f"top_k must be an integer in 1..{MAX_TOP_K}; got {top_k!r}")
    return min(top_k, available)


def influence(
    model: nn.Module,
    test_inputs: Tensor,
    train: Dataset | tuple[Tensor, Tensor],
    *,
    layers: Layers,
    test_labels: Tensor | Sequence[int] | None = None,
    extract: str | Mapping[str, str] = "conv1x1",
    checkpoints: Sequence[Checkpoint] | None = None,
    lr: float | Sequence[float] = 1.0,
    top_k: int = 5,
    batch_size: int = 256,
    loss: Loss = cross_entropy,
    progress: Progress | None = None,
) -> Influence:
    """The top-``k`` proponents and opponents of each test image in ``train``, with pixel maps (see the module docstring).

    ``test_labels`` default to the model's predictions (the prediction is explained).
    """
    dataset = as_dataset(train)
    k = _check_top_k(top_k, len(dataset), batch_size)
    tracin = TracIn(model, layers, extract=extract, checkpoints=checkpoints, lr=lr, loss=loss)
    tests = tracin.test_gradients(test_inputs, test_labels)
    columns = [
        tracin.scores(images, labels, tests).T.float().cpu() for _, images, labels in _batches(dataset, batch_size, progress, "scores")
    ]
    scores = torch.cat(columns, dim=1)
    proponents = scores.topk(k, dim=1).indices
    opponents = (-scores).topk(k, dim=1).indices
    chosen = torch.cat([proponents, opponents], dim=1)  # (T, 2k): each test image's training images
    picked = []
    bar = progress(len(chosen), "maps") if progress else None
    for t, row in enumerate(chosen.tolist()):  # only the pairs that are shown: each test image against its own 2k images
        images, labels = zip(*(dataset[i] for i in row))
        result = tracin.maps(torch.stack(images), torch.tensor([int(label) for label in labels]), tests.select([t]))
        picked.append(pixel_map(result.maps, tuple(images[0].shape[-2:]))[:, 0].cpu())  # the training images' own size
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    maps = torch.stack(picked)[:, :, None]  # (T, 2k, 1, H, W)
    return Influence(tracin.layer_names, tests.labels.cpu(), scores, proponents, opponents, maps[:, :k], maps[:, k:])


def self_influence(
    model: nn.Module,
    train: Dataset | tuple[Tensor, Tensor],
    *,
    layers: Layers,
    extract: str | Mapping[str, str] = "conv1x1",
    checkpoints: Sequence[Checkpoint] | None = None,
    lr: float | Sequence[float] = 1.0,
    top_k: int = 10,
    batch_size: int = 256,
    loss: Loss = cross_entropy,
    progress: Progress | None = None,
) -> SelfInfluence:
    """``TracIn(z, z)`` of every training image, and the maps of the ``top_k`` highest (mislabel and outlier candidates)."""
    dataset = as_dataset(train)
    k = _check_top_k(top_k, len(dataset), batch_size)
    tracin = TracIn(model, layers, extract=extract, checkpoints=checkpoints, lr=lr, loss=loss)
    scores = torch.cat(
        [
            tracin.self_influence(images, labels).scores.float().cpu()
            for _, images, labels in _batches(dataset, batch_size, progress, "self-influence")
        ]
    )
    top = scores.topk(k).indices
    maps = []
    for _, images, labels in _batches(Subset(dataset, top.tolist()), batch_size, None, "maps"):
        maps.append(pixel_map(tracin.self_influence(images, labels).maps, tuple(images.shape[-2:])).cpu())
    return SelfInfluence(tracin.layer_names, scores, top, torch.cat(maps))


__all__ = ["MAX_TOP_K", "Influence", "SelfInfluence", "as_dataset", "influence", "pixel_map", "self_influence"]
