"""Everything in one call (``normgrad eval influence``): ground truth, training run, studies (a) and (b), JSON, figures, markdown."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from normgrad.evaluation.influence import figures, markdown, mislabels, proponents
from normgrad.evaluation.influence.setup import SetupConfig, build
from normgrad.evaluation.training.fashion_mnist import load_split

LAYERS = ("conv1", "conv2", "conv3")


@dataclass(frozen=True)
class StudyConfig:
    setup: SetupConfig = field(default_factory=SetupConfig)
    top_k: int = 5
    batch_size: int = 500
    captum_images: int = 2000
    resamples: int = 2000
    layers: tuple[str, ...] = LAYERS


QUICK = StudyConfig(
    setup=SetupConfig(train_images=3000, test_images=20, epochs=2, lrs=(0.05, 0.01)),
    captum_images=300,
    resamples=500,
)


def _progress(total: int, description: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)


def run_study(config: StudyConfig, out: Path, *, data: Path | None = None, command: str = "normgrad eval influence",
              log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Run (a) and (b) and write ``out/influence.json``, ``influence.md`` and the two figures; returns the document."""
    started = time.perf_counter()
    torch.manual_seed(config.setup.seed)
    train_split, test_split = load_split("train", data), load_split("test", data)
    out.mkdir(parents=True, exist_ok=True)
    log(f"training the CNN on {config.setup.train_images} images with a planted shortcut and mislabels ({config.setup.epochs} epochs)")
    setup = build(train_split, test_split, config.setup, _progress)
    log(f"test accuracy: {setup.accuracy_patched:.3f} with the patch, {setup.accuracy_plain:.3f} without")
    layers = list(config.layers)
    log("(a) proponents of patched test images and their maps")
    shortcut, patched_result = proponents.run(setup, layers, config.top_k, config.batch_size, config.resamples, _progress)
    log("(b) self-influence of every training image, and Captum's on a subset")
    mislabel_numbers, flagged = mislabels.run(setup, layers, config.batch_size, config.captum_images, config.resamples, _progress)
    document = {
        "command": command,
        "config": asdict(config),
        "layers": layers,
        "setup": {**asdict(config.setup), "accuracy_patched": setup.accuracy_patched, "accuracy_plain": setup.accuracy_plain},
        "shortcut": shortcut,
        "mislabels": mislabel_numbers,
        "seconds": time.perf_counter() - started,
    }
    (out / "influence.json").write_text(json.dumps(document, indent=1, default=float) + "\n")
    figures.proponents_figure(out / "influence-proponents.png", setup.test_x, setup.train_x, setup.patched, patched_result)
    figures.flagged_figure(out / "influence-flagged.png", setup.train_x, setup.train_y, setup.true_y, flagged)
    markdown.write(out)
    return document
