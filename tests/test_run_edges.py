"""The run at its edges: special files among the inputs, a model that refuses an input."""

import json
import os
import re
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


FAST = {"model": "torchvision:resnet18", "weights": "none", "method": "center", "workers": 0, "writers": 0, "verbose": False}


def test_a_folder_that_cannot_be_listed_is_reported_and_counted(tmp_path, monkeypatch, capsys):
    import normgrad.run.files as files

    picture(tmp_path / "photos" / "a.png")
    locked = tmp_path / "photos" / "locked"
    picture(locked / "b.png")
    real = files.os.scandir

    def scandir(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(files.os, "scandir", scandir)
    result = ng.explain(tmp_path / "photos", **{**FAST, "verbose": True})
    assert [e.name for e in result.images] == ["a"]
    assert result.failed == [{"image": str(locked), "error": "cannot list this folder: Permission denied"}] and not result.ok
    assert f"normgrad: skipping {locked}: cannot list this folder: Permission denied" in capsys.readouterr().err


def test_folders_holding_normgrad_results_are_not_searched(tmp_path):
    picture(tmp_path / "photos" / "a.png")
    first = ng.explain(tmp_path / "photos", tmp_path / "photos" / "first", **FAST)
    assert len(first.records) == 1 and (tmp_path / "photos" / "first" / "a.png").exists()
    second = ng.explain(tmp_path / "photos", tmp_path / "photos" / "second", **FAST)  # first/ holds an overlay and a gallery
    assert [r["name"] for r in second.records] == ["a"] and second.ok


def test_control_characters_in_names_are_quoted_in_the_table(tmp_path, capsys):
    from normgrad.cli import main

    picture(tmp_path / "photos" / "a\nb\x1b[31m.png")
    argv = ["explain", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--model", "torchvision:resnet18", "--weights",
            "none", "--method", "center", "--workers", "0"]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].startswith("'a\\nb\\x1b[31m.png'") and "\x1b" not in "".join(table)


def test_sigterm_ends_explain_like_ctrl_c(tmp_path):
    import signal
    import time

    for i in range(6):
        picture(tmp_path / "photos" / f"img{i}.png", seed=i)
    code = (
        "import sys, time\nimport normgrad.run.api as api\noriginal = api.outputs\n"
        "def slow(*a, **k):\n    time.sleep(2)\n    return original(*a, **k)\napi.outputs = slow\n"
        "from normgrad.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["explain", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--model", "torchvision:resnet18", "--weights",
            "none", "--method", "center", "--workers", "0", "--writers", "0", "--batch-size", "1"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-c", code, *argv], env={**os.environ, "PYTHONPATH": SRC}, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "out" / ".normgrad" / "journal").glob("*.jsonl")):
        time.sleep(0.05)
    time.sleep(1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130 and "interrupted" in err, err
    index = next((tmp_path / "out" / "gallery").rglob("index.js")).read_text()
    assert re.search(r'"running":\s*false', index), index  # the gallery does not say "run in progress"
