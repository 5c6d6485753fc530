"""``normgrad influence``: image folders in, the output contract and a gallery out; bad input is one line and exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from normgrad.cli import main


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    for label in range(3):
        (tmp_path / "train" / str(label)).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "train" / str(label) / f"{k}.png")
    (tmp_path / "test").mkdir()
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "test" / f"t{k}.png")
    return tmp_path


ARGS = ["--model", "torchvision:resnet18", "--weights", "none", "--num-classes", "3", "--layers", "layer3", "--top-k", "2"]


def test_writes_proponents_opponents_maps_and_a_gallery(folders):
    out = folders / "out"
    assert main(["influence", str(folders / "test"), "--train", str(folders / "train"), "--out", str(out), *ARGS]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(entry["name"] for entry in summary["images"]) == ["t0", "t1"]
    entry = summary["images"][0]
    assert len(entry["proponents"]) == 2 and len(entry["opponents"]) == 2
    assert entry["proponents"][0]["score"] >= entry["opponents"][0]["score"]
    assert np.load(out / "t0.npy").shape == (4, 1, 224, 224)
    assert (out / "t0.png").is_file() and "t0" in (out / "index.html").read_text()


def test_a_second_run_into_the_same_folder_needs_overwrite(folders, capsys):
    out = folders / "out"
    command = ["influence", str(folders / "test"), "--train", str(folders / "train"), "--out", str(out), *ARGS]
    assert main(command) == 0
    assert main(command) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*command, "--overwrite"]) == 0


def test_a_class_folder_the_model_does_not_have_is_one_error(folders, capsys):
    (folders / "train" / "7").mkdir()
    assert main(["influence", str(folders / "test"), "--train", str(folders / "train"), "--out", str(folders / "o"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "the model has 3 classes" in err and "Traceback" not in err
