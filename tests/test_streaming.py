"""Dataset-scale explain: folders and globs, bounded batching, resume, and torchrun sharding."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from normgrad.cli import main
from normgrad.streaming import Item, batches, expand_inputs, unique_stems


def make_folder(root: Path, count: int, start: int = 0) -> Path:
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        size = (40, 48) if i % 3 else (48, 40)  # two preprocessed sizes
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(sub / f"img{i:02d}.png")
    return root


def test_expand_inputs_and_unique_stems(tmp_path):
    folder = make_folder(tmp_path / "photos", 4)
    (folder / "notes.txt").write_text("not an image")
    (folder / "b" / "img01.png").write_bytes((folder / "a" / "img01.png").read_bytes())  # same name, other folder
    found = expand_inputs([folder])
    assert [p.name for p in found] == ["img01.png", "img03.png", "img00.png", "img01.png", "img02.png"]
    assert expand_inputs([str(folder / "a" / "*.png"), folder / "a" / "img01.png"]) == [
        folder / "a" / "img01.png",
        folder / "a" / "img03.png",
    ]
    assert unique_stems(found) == ["img01", "img03", "img00", "img01-1", "img02"]


def test_batches_group_by_size_and_bound_what_waits():
    shapes = [(3, 8, 8), (3, 8, 9), (3, 8, 10), (3, 8, 11)] * 5
    items = [Item(i, Path(f"{i}.png"), str(i), torch.zeros(s)) for i, s in enumerate(shapes)]
    items.insert(3, Item(99, Path("bad.png"), "bad", error="unreadable"))
    errors = []
    out = list(batches(iter(items), 2, errors.append))
    assert [e.index for e in errors] == [99]
    assert sorted(i.index for b in out for i in b) == list(range(20))  # each image exactly once
    assert all(len({tuple(i.tensor.shape) for i in b}) == 1 and len(b) <= 2 for b in out)


def small_model_args(folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        "explain",
        str(folder),
        "--model",
        "torchvision:resnet18",
        "--weights",
        "none",
        "--out",
        str(out),
        "--layers",
        "layer3,layer4",
        *extra,
    ]


def test_folder_with_workers_and_resume(tmp_path, capsys):
    folder = make_folder(tmp_path / "photos", 4)
    out = tmp_path / "maps"
    assert main(small_model_args(folder / "a", out, "--workers", "2")) == 0  # an interrupted run: half the images
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    assert set(first) == {"img01.npy", "img03.npy"}
    assert main(small_model_args(folder, out, "--workers", "2")) == 2  # outputs exist: refuse without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(small_model_args(folder, out, "--workers", "2", "--resume")) == 0
    assert {p.name for p in out.glob("*.npy")} == {"img00.npy", "img01.npy", "img02.npy", "img03.npy"}
    assert all(out.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in first.items())  # not redone
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(r["stem"] for r in summary["images"]) == ["img00", "img01", "img02", "img03"]
    assert np.load(out / "img00.npy").shape == (48, 40)


def torchrun(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "normgrad", *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_two_processes_each_image_exactly_once_then_resume(tmp_path):
    folder = make_folder(tmp_path / "photos", 5)
    out = tmp_path / "maps"
    run = torchrun(*small_model_args(folder, out, "--workers", "0"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    rank0 = [json.loads(line) for line in (out / "records.rank0.jsonl").read_text().splitlines()]
    rank1 = [json.loads(line) for line in (out / "records.rank1.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rank0) == [0, 2, 4] and sorted(r["index"] for r in rank1) == [1, 3]  # i mod 2
    assert {p.stem for p in out.glob("*.npy")} == {f"img{i:02d}" for i in range(5)}
    summary = json.loads((out / "summary.json").read_text())
    assert [r["index"] for r in summary["images"]] == [0, 1, 2, 3, 4]
    make_folder(folder, 2, start=5)  # new images arrive; resume does only those
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    run = torchrun(*small_model_args(folder, out, "--workers", "0", "--resume"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert all(out.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in before.items())
    stems = [r["stem"] for r in json.loads((out / "summary.json").read_text())["images"]]
    assert sorted(stems) == [f"img{i:02d}" for i in range(7)] and len(stems) == len(set(stems))
