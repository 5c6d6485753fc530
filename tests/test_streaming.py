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
from normgrad.run.files import expand_inputs
from normgrad.run.loading import Item, batches


def make_folder(root: Path, count: int, start: int = 0) -> Path:
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        size = (40, 48) if i % 3 else (48, 40)  # two preprocessed sizes
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(sub / f"img{i:02d}.png")
    return root


def test_expand_inputs_roots_and_order(tmp_path):
    folder = make_folder(tmp_path / "photos", 4)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes((folder / "a" / "img01.png").read_bytes())  # hidden: skipped
    (folder / "b" / "img01.png").write_bytes((folder / "a" / "img01.png").read_bytes())  # same name, other folder
    found = expand_inputs([folder])
    assert [i.path.relative_to(folder).as_posix() for i in found] == [
        "a/img01.png",
        "a/img03.png",
        "b/img00.png",
        "b/img01.png",
        "b/img02.png",
    ]
    assert {i.root for i in found} == {folder}
    globbed = expand_inputs([str(folder / "a" / "*.png"), folder / "a" / "img01.png"])  # the file again: once
    assert [(i.path.name, i.root) for i in globbed] == [("img01.png", folder / "a"), ("img03.png", folder / "a")]
    deep = expand_inputs([str(folder / "**" / "img0[12].png")])
    assert [i.path.relative_to(folder).as_posix() for i in deep] == ["a/img01.png", "b/img01.png", "b/img02.png"]
    files = expand_inputs([folder / "a" / "img01.png", folder / "b" / "img00.png"])
    assert {i.root for i in files} == {folder}  # files given by name share their common folder


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
    folder = make_folder(tmp_path / "photos", 2)
    out = tmp_path / "maps"
    assert main(small_model_args(folder, out, "--workers", "2")) == 0
    first = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    assert set(first) == {"a/img01.npy", "b/img00.npy"}  # names mirror the paths below the folder
    make_folder(folder, 2, start=2)  # new images arrive
    assert main(small_model_args(folder, out, "--workers", "2")) == 2  # results exist: refuse without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(small_model_args(folder, out, "--workers", "2", "--resume")) == 0
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.npy")} == {"a/img01.npy", "a/img03.npy", "b/img00.npy", "b/img02.npy"}
    assert all(out.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in first.items())  # not redone
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["images"]] == ["a/img01", "a/img03", "b/img00", "b/img02"]
    assert np.load(out / "b" / "img00.npy").shape == (48, 40)
    assert "2 of them done earlier" in capsys.readouterr().out


def torchrun(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "normgrad", *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_two_processes_each_image_exactly_once_then_resume(tmp_path):
    """Also: one unreadable image is one line and exit 0 (no ChildFailedError); outputs deleted or truncated after the run
    are redone by --resume; a later single-process --overwrite run never merges the torchrun's records."""
    folder = make_folder(tmp_path / "photos", 5)
    (folder / "b" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "maps"
    run = torchrun(*small_model_args(folder, out, "--workers", "0"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ChildFailedError" not in run.stderr and run.stderr.count("normgrad: skipping") == 1 and "broken.png" in run.stderr
    summary = json.loads((out / "summary.json").read_text())
    by_rank = {rank: sorted(r["index"] for r in summary["images"] + summary["failed"] if r["rank"] == rank) for rank in (0, 1)}
    assert by_rank == {0: [0, 2, 4], 1: [1, 3, 5]}  # image i goes to rank i mod 2
    assert [r["name"] for r in summary["images"]] == ["a/img01", "a/img03", "b/img00", "b/img02", "b/img04"]
    assert [r["name"] for r in summary["failed"]] == ["b/broken"] and not list((out / ".normgrad" / "journal").iterdir())
    make_folder(folder, 2, start=5)  # new images arrive; resume does only those, and what was damaged
    (out / "a" / "img01.npy").unlink()
    (out / "b" / "img02.png").write_bytes((out / "b" / "img02.png").read_bytes()[:100])
    before = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    run = torchrun(*small_model_args(folder, out, "--workers", "0", "--resume"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert all(out.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in before.items() if name != "b/img02.npy")
    assert np.load(out / "a" / "img01.npy").shape == (40, 48) and Image.open(out / "b" / "img02.png").size == (48, 40)
    names = [r["name"] for r in json.loads((out / "summary.json").read_text())["images"]]
    assert names == sorted(f"{'a' if i % 2 else 'b'}/img{i:02d}" for i in range(7))
    assert main(small_model_args(folder / "a", out, "--workers", "0", "--overwrite")) == 0  # a later single-process run
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["images"]] == ["img01", "img03", "img05"] and summary["failed"] == []
    assert summary["runs"][summary["run"]]["world"] == 1


def test_any_reader_failure_skips_that_image_only(tmp_path):
    from normgrad.run.loading import ImageFiles

    path = make_folder(tmp_path / "photos", 1) / "b" / "img00.png"

    def broken(photo):
        raise RuntimeError("a decoder bug")

    item = ImageFiles([(0, path, "img00")], broken)[0]
    assert item.tensor is None and "RuntimeError: a decoder bug" in item.error
    assert item.identity["bytes"] == path.stat().st_size  # what was read is still identified
