"""The run at its edges: special files among the inputs, a model that refuses an input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import normgrad as ng

SRC = str(Path(__file__).resolve().parents[1] / "src")


def picture(path: Path, size=(48, 40), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


class Picky(nn.Module):
    """A small CNN whose forward refuses inputs whose width is not a multiple of 8 (as some timm models do)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8:
            raise RuntimeError(f"input width {x.shape[-1]} is not divisible by 8")
        return self.head(self.features(x).mean((2, 3)))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_named_as_an_input_is_skipped_without_opening_it(tmp_path):
    photo = picture(tmp_path / "photos" / "a.png")
    fifo = tmp_path / "photos" / "pipe.png"
    os.mkfifo(fifo)
    argv = ["explain", str(photo), str(fifo), "--out", str(tmp_path / "out"), "--model", "torchvision:resnet18", "--weights", "none",
            "--method", "center", "--workers", "0"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "normgrad", *argv], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert [line for line in done.stderr.splitlines() if "pipe.png" in line] == [
        f"normgrad: skipping {fifo}: {str(fifo)!r} is not a regular file (a pipe, socket or device)"
    ]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [e["name"] for e in summary["images"]] == ["a"] and [e["name"] for e in summary["failed"]] == ["pipe"]


def test_a_model_that_raises_on_an_input_skips_that_image_with_its_message(tmp_path):
    paths = [picture(tmp_path / "photos" / "fits.png", (48, 40)), picture(tmp_path / "photos" / "odd.png", (52, 40), seed=1)]
    preprocess = ng.models.Preprocess(size=40)  # 48x40 -> 48 wide; 52x40 -> 52 wide
    result = ng.explain(paths, tmp_path / "out", model=Picky(), preprocess=preprocess, method="normgrad", layers=["features.3"],
                        batch_size=2, workers=0, writers=0, verbose=False)  # fmt: skip
    assert [r["name"] for r in result.records] == ["fits"]
    assert result.failed == [
        {"image": str(paths[1]), "error": "the model failed on this image: RuntimeError: input width 52 is not divisible by 8"}
    ]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(e["name"], e["error"]) for e in summary["failed"]] == [("odd", result.failed[0]["error"])]
