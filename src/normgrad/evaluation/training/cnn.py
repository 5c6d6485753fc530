"""A small CNN trained here on Fashion-MNIST: the model whose training the study explains.

=========  ==========================================  ============
stage      modules                                     output
=========  ==========================================  ============
1          ``conv1`` 3×3 → ``bn1`` → ``relu1`` → pool   w × 14 × 14
2          ``conv2`` 3×3 → ``bn2`` → ``relu2`` → pool   2w × 7 × 7
3          ``conv3`` 3×3 → ``bn3`` → ``relu3``          2w × 7 × 7
head       ``flatten`` → ``fc``                        10
=========  ==========================================  ============

Training: SGD with Nesterov momentum, one-cycle learning rate, weight
decay, random horizontal flips; seeded (initialisation and data order), so
one seed gives one model.  Inputs are normalised with the training set's
mean and standard deviation: the dataset mean is 0 in model space.

:func:`load_or_train` caches the weights under a folder the user chooses
(default ``~/.cache/normgrad``), keyed by the configuration and the seed,
and reads them back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normgrad.errors import NormGradError
from normgrad.evaluation.training.fashion_mnist import Split

SALIENCY_LAYERS = ("relu2", "relu3")  # the stage outputs at 14×14 and 7×7 (stride 2 and 4 of the 28-pixel input)
CHECKPOINT_FORMAT = 1


class FashionCNN(nn.Sequential):
    """Three 3×3 conv + BatchNorm + ReLU stages (``w``, ``2w``, ``2w`` channels) and a linear head; see the module table."""

    def __init__(self, width: int = 16, num_classes: int = 10, side: int = 28) -> None:
        def stage(index: int, inputs: int, outputs: int) -> list[tuple[str, nn.Module]]:
            return [
                (f"conv{index}", nn.Conv2d(inputs, outputs, 3, padding=1, bias=False)),
                (f"bn{index}", nn.BatchNorm2d(outputs)),
                (f"relu{index}", nn.ReLU()),
            ]

        layers = [*stage(1, 1, width), ("pool1", nn.MaxPool2d(2)), *stage(2, width, 2 * width), ("pool2", nn.MaxPool2d(2))]
        layers += [*stage(3, 2 * width, 2 * width), ("flatten", nn.Flatten()), ("fc", nn.Linear(2 * width * (side // 4) ** 2, num_classes))]
        super().__init__(OrderedDict(layers))


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (every field is part of the cache key)."""

    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: int = 16
    flip: bool = True
    train_images: int | None = None  # the first N images of the training split (None: all)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class TrainedModel:
    """A trained model (eval mode) with the normalisation it expects and how it was obtained."""

    model: FashionCNN
    mean: float
    std: float
    test_accuracy: float
    train_seconds: float
    config: TrainConfig
    seed: int
    cached_at: Path | None = None

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 (N, H, W) images → normalised float (N, 1, H, W) model inputs."""
        return normalise(images, self.mean, self.std)


def normalise(images: Tensor, mean: float, std: float) -> Tensor:
    """uint8 (N, H, W) → ``(x / 255 − mean) / std`` as float32 (N, 1, H, W)."""
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise NormGradError(f"expected uint8 images (N, H, W); got {images.dtype} {tuple(images.shape)}")
    return ((images.float() / 255 - mean) / std)[:, None]


def train(
    inputs: Tensor,
    labels: Tensor,
    config: TrainConfig,
    seed: int,
    *,
    progress: Callable[[int], Any] | None = None,
) -> FashionCNN:
    """Train a fresh :class:`FashionCNN` on normalised ``inputs`` (N, 1, H, W); seeded; returned in eval mode.

    ``progress(total_steps)`` may return a tqdm-like object (``update``, ``close``).
    """
    if inputs.dim() != 4 or inputs.shape[1] != 1 or len(inputs) != len(labels):
        raise NormGradError(f"expected inputs (N, 1, H, W) and N labels; got {tuple(inputs.shape)} and {tuple(labels.shape)}")
    torch.manual_seed(seed)
    model = FashionCNN(config.width, side=inputs.shape[-1])
    order = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(inputs) / config.batch_size)
    optimiser = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.momentum > 0
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.lr, total_steps=config.epochs * steps_per_epoch)
    bar = progress(config.epochs * steps_per_epoch) if progress else None
    model.train()
    try:
        for _ in range(config.epochs):
            permutation = torch.randperm(len(inputs), generator=order)
            for start in range(0, len(inputs), config.batch_size):
                batch = permutation[start : start + config.batch_size]
                x = inputs[batch]
                if config.flip:
                    flip = torch.rand(len(batch), generator=order) < 0.5
                    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                loss = F.cross_entropy(model(x), labels[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                if bar:
                    bar.update(1)
    finally:
        if bar:
            bar.close()
    return model.eval()


@torch.no_grad()
def predictions(model: nn.Module, inputs: Tensor, batch_size: int = 1000) -> Tensor:
    """Predicted classes (N,), in eval mode."""
    model.eval()
    return torch.cat([model(inputs[i : i + batch_size]).argmax(1) for i in range(0, len(inputs), batch_size)])


def accuracy(model: nn.Module, inputs: Tensor, labels: Tensor) -> float:
    return float((predictions(model, inputs) == labels).double().mean())


def default_cache_dir() -> Path:
    """``$NORMGRAD_CACHE``, else ``$XDG_CACHE_HOME/normgrad``, else ``~/.cache/normgrad``."""
    if os.environ.get("NORMGRAD_CACHE"):
        return Path(os.environ["NORMGRAD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "normgrad"


def load_or_train(
    train_split: Split,
    test_split: Split,
    config: TrainConfig = TrainConfig(),
    seed: int = 0,
    *,
    cache: Path | None = None,
    retrain: bool = False,
    progress: Callable[[int], Any] | None = None,
) -> TrainedModel:
    """The cached model for (``config``, ``seed``), or train one and cache it; ``cache=None``: the default folder."""
    path = (cache or default_cache_dir()) / f"fashion-cnn-{config.key()}-seed{seed}.pt"
    if path.exists() and not retrain:
        return _read_checkpoint(path, config, seed)
    images, labels = train_split.images, train_split.labels
    if config.train_images is not None:
        images, labels = images[: config.train_images], labels[: config.train_images]
    mean, std = float(images.double().mean() / 255), float((images.double() / 255).std())
    started = time.perf_counter()
    model = train(normalise(images, mean, std), labels, config, seed, progress=progress)
    seconds = time.perf_counter() - started
    test_accuracy = accuracy(model, normalise(test_split.images, mean, std), test_split.labels)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(config),
        "seed": seed,
        "state_dict": model.state_dict(),
        "mean": mean,
        "std": std,
        "test_accuracy": test_accuracy,
        "train_seconds": seconds,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(checkpoint, partial)
    partial.replace(path)  # atomic: a crash never leaves half a checkpoint under the final name
    return TrainedModel(model, mean, std, test_accuracy, seconds, config, seed, path)


def _read_checkpoint(path: Path, config: TrainConfig, seed: int) -> TrainedModel:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if checkpoint.get("format") != CHECKPOINT_FORMAT or checkpoint["config"] != asdict(config) or checkpoint["seed"] != seed:
            raise KeyError("configuration or format differs")
        model = FashionCNN(config.width)
        model.load_state_dict(checkpoint["state_dict"])
    except Exception as error:  # any unreadable or foreign file: say which and how to recover
        raise NormGradError(f"cannot use the cached model {path} ({error}); delete it or pass --retrain") from error
    return TrainedModel(
        model.eval(),
        float(checkpoint["mean"]),
        float(checkpoint["std"]),
        float(checkpoint["test_accuracy"]),
        float(checkpoint["train_seconds"]),
        config,
        seed,
        path,
    )
