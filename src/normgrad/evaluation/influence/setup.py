"""The study's ground truth and its training run: planted shortcut, planted mislabels, checkpoints of plain SGD.

* **Shortcut**: a seeded share of the training images carries the 4×4
  ``position`` patch of its own label (:mod:`normgrad.evaluation.shortcut`,
  shared with the faithfulness study); the patch's pixels are known exactly.
* **Mislabels**: a seeded share of the *unpatched* training images gets a
  wrong label (uniform over the other nine classes).
* **Training**: the training study's :class:`FashionCNN`, plain SGD with
  momentum and one learning rate per epoch, no flips (a flip would move the
  patch), a checkpoint (state dict) and its learning rate kept after every
  epoch: what TracInCP sums over.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normgrad.evaluation.shortcut import plant_shortcut, stamp
from normgrad.evaluation.training.cnn import FashionCNN, accuracy, normalise
from normgrad.evaluation.training.fashion_mnist import Split


@dataclass(frozen=True)
class SetupConfig:
    train_images: int = 60_000
    test_images: int = 100
    patch_share: float = 0.2
    mislabel_share: float = 0.01
    epochs: int = 3
    lrs: tuple[float, ...] = (0.05, 0.02, 0.005)
    batch_size: int = 128
    width: int = 16
    seed: int = 0


@dataclass
class Setup:
    """Model inputs (normalised), labels as trained on, the ground truth, and the run's checkpoints."""

    model: FashionCNN
    train_x: Tensor
    train_y: Tensor
    true_y: Tensor
    patched: Tensor  # bool (N,): the training image carries its label's patch
    mislabelled: Tensor  # bool (N,)
    test_x: Tensor  # patched test images
    test_plain_x: Tensor  # the same images without the patch
    test_y: Tensor
    test_mask: Tensor  # bool (T, 1, H, W): the test patch
    train_mask: Tensor  # bool (N, 1, H, W): the training patches
    checkpoints: list[dict[str, Tensor]]
    lrs: list[float]
    accuracy_patched: float
    accuracy_plain: float


def build(train: Split, test: Split, config: SetupConfig, progress: Callable[[int, str], Any] | None = None) -> Setup:
    """Plant the ground truth, train with checkpoints, measure how much the model relies on the patch."""
    images, labels = train.images[: config.train_images], train.labels[: config.train_images]
    planted = plant_shortcut(images, labels, config.patch_share, config.seed, kind="position")
    candidates = (~planted.has_patch).nonzero().flatten()
    generator = torch.Generator().manual_seed(config.seed + 1)
    count = round(config.mislabel_share * len(images))
    flipped = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
    noisy = planted.labels.clone()
    noisy[flipped] = (noisy[flipped] + torch.randint(1, 10, (count,), generator=generator)) % 10
    mislabelled = torch.zeros(len(images), dtype=torch.bool)
    mislabelled[flipped] = True
    mean, std = float(planted.images.double().mean() / 255), float((planted.images.double() / 255).std())
    train_x = normalise(planted.images, mean, std)
    model, checkpoints = train_with_checkpoints(train_x, noisy, config, progress)
    test_images, test_labels = test.images[: config.test_images], test.labels[: config.test_images]
    stamped, test_mask = stamp(test_images, test_labels, "position")
    test_x, test_plain_x = normalise(stamped, mean, std), normalise(test_images, mean, std)
    return Setup(model, train_x, noisy, planted.labels, planted.has_patch, mislabelled, test_x, test_plain_x, test_labels, test_mask,
                 planted.mask, checkpoints, list(config.lrs[: config.epochs]),
                 accuracy(model, test_x, test_labels), accuracy(model, test_plain_x, test_labels))  # fmt: skip


def train_with_checkpoints(
    inputs: Tensor, labels: Tensor, config: SetupConfig, progress: Callable[[int, str], Any] | None = None
) -> tuple[FashionCNN, list[dict[str, Tensor]]]:
    """Seeded SGD (momentum 0.9, ``lrs[e]`` in epoch ``e``); a copy of the state dict after every epoch."""
    if len(config.lrs) < config.epochs:
        raise ValueError(f"{config.epochs} epochs need {config.epochs} learning rates; got {len(config.lrs)}")
    torch.manual_seed(config.seed)
    model = FashionCNN(config.width, side=inputs.shape[-1])
    optimiser = torch.optim.SGD(model.parameters(), lr=config.lrs[0], momentum=0.9)
    order = torch.Generator().manual_seed(config.seed)
    steps = math.ceil(len(inputs) / config.batch_size)
    bar = progress(config.epochs * steps, "training") if progress else None
    checkpoints = []
    try:
        for epoch in range(config.epochs):
            for group in optimiser.param_groups:
                group["lr"] = config.lrs[epoch]
            model.train()
            permutation = torch.randperm(len(inputs), generator=order)
            for start in range(0, len(inputs), config.batch_size):
                batch = permutation[start : start + config.batch_size]
                loss = F.cross_entropy(model(inputs[batch]), labels[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                if bar is not None:
                    bar.update(1)
            checkpoints.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    finally:
        if bar is not None:
            bar.close()
    return model.eval(), checkpoints
