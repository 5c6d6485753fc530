"""The output contract of `normgrad explain`, one test per case of issue 10 (numbers in the test names)."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from normgrad.cli import main
from normgrad.store import OutputStore, StoreError, precheck

FAST = ["--model", "torchvision:resnet18", "--weights", "none", "--method", "center", "--workers", "0"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def picture(path: Path, size=(48, 40), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def explain(capsys, *argv, fast=True):
    code = main(["explain", *map(str, argv), *(FAST if fast else [])])
    out, err = capsys.readouterr()
    return code, out, err


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))


def outputs(out: Path) -> set[str]:
    """The files of the images and the manifest (not the store's own folder, nor the gallery)."""
    return {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and not {".normgrad", "gallery", "index.html"} & set(p.relative_to(out).parts)
    }


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


# ----------------------------------------------------------------------------- data loss


def test_1_never_replaces_the_input_or_writes_through_a_symlink(tmp_path, capsys):
    d = tmp_path / "d"
    original = picture(d / "cat.png").read_bytes()
    code, _, err = explain(capsys, d / "cat.png", "--out", d)
    assert code == 0, err
    assert (d / "cat.png").read_bytes() == original  # the input photo is untouched
    assert np.load(d / "cat.png.npy").shape == (40, 48) and Image.open(d / "cat.png.png").size == (48, 40)

    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "cat.png").symlink_to(precious)
    picture(tmp_path / "one" / "cat.jpg")
    code, _, err = explain(capsys, tmp_path / "one" / "cat.jpg", "--out", out)
    assert code == 2 and one_line(err) and "normgrad did not write it" in err and "--overwrite" in err
    assert precious.read_text() == "precious" and not (out / "summary.json").exists()
    code, _, err = explain(capsys, tmp_path / "one" / "cat.jpg", "--out", out, "--overwrite")
    assert code == 0, err
    assert precious.read_text() == "precious" and not (out / "cat.png").is_symlink() and Image.open(out / "cat.png").size == (48, 40)


def test_2_every_input_gets_its_own_outputs(tmp_path, capsys):
    same = tmp_path / "same"
    inputs = [picture(same / "a" / "cat.jpg", seed=1), picture(same / "b" / "cat.jpg", seed=2), picture(same / "cat-1.jpg", seed=3)]
    code, _, err = explain(capsys, *inputs, "--out", tmp_path / "o")
    assert code == 0, err
    assert outputs(tmp_path / "o") == {"a/cat.png", "a/cat.npy", "b/cat.png", "b/cat.npy", "cat-1.png", "cat-1.npy", "summary.json"}
    assert [r["image"] for r in summary(tmp_path / "o")["images"]] == [str(p) for p in inputs]


def test_3_one_run_at_a_time(tmp_path, capsys):
    picture(tmp_path / "photos" / "a.png")
    out = tmp_path / "out"
    holder = OutputStore(out, "other-run")
    holder.lock()
    try:
        for extra in ([], ["--overwrite"], ["--resume"]):
            code, _, err = explain(capsys, tmp_path / "photos", "--out", out, *extra)
            assert code == 2 and one_line(err) and "another normgrad run is writing" in err and "other-run" in err
    finally:
        holder.close()
    assert not (out / "summary.json").exists()


def slow_run(folder: Path, out: Path, *extra: str, pause: float = 4.0) -> subprocess.Popen:
    """`normgrad explain` in its own process, pausing `pause` s once it holds the folder's lock (test-side injection)."""
    code = textwrap.dedent(f"""
        import sys, time
        from normgrad.run.loop import BatchLoop
        original = BatchLoop.run
        def paused(*args, **kwargs):
            time.sleep({pause})
            return original(*args, **kwargs)
        BatchLoop.run = paused
        from normgrad.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    argv = ["explain", str(folder), "--out", str(out), *FAST, *extra]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_3_two_runs_started_together(tmp_path, capsys):
    folder = tmp_path / "photos"
    for i in range(6):
        picture(folder / f"img{i}.png", seed=i)
    out = tmp_path / "out"
    first, second = slow_run(folder, out), slow_run(folder, out)
    codes = sorted(p.wait(timeout=600) for p in (first, second))
    errors = first.stderr.read() + second.stderr.read()
    assert codes == [0, 2], errors
    assert "another normgrad run is writing" in errors or "already holds normgrad results" in errors
    assert [r["name"] for r in summary(out)["images"]] == [f"img{i}" for i in range(6)]  # each image once

    running = slow_run(folder, out, "--overwrite", pause=6.0)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until it holds the lock
        try:
            precheck(out)
        except StoreError:
            break
        time.sleep(0.05)
    code, _, err = explain(capsys, folder, "--out", out, "--overwrite")  # --overwrite during another run
    assert code == 2 and "another normgrad run is writing" in err
    assert running.wait(timeout=600) == 0, running.stderr.read()
    assert len(summary(out)["images"]) == 6


def test_4_workers_die_with_a_killed_process(tmp_path):
    folder = tmp_path / "photos"
    for i in range(8):
        picture(folder / f"img{i}.png", seed=i)
    code = textwrap.dedent("""
        import sys, time
        import normgrad.run.api as api
        original = api.outputs
        def slow(*args, **kwargs):
            time.sleep(30)
            return original(*args, **kwargs)
        api.outputs = slow
        from normgrad.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    argv = ["explain", str(folder), "--out", str(tmp_path / "out"), *FAST[:-2], "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", code, *argv], env=env, stderr=subprocess.DEVNULL)
    workers = wait_for_children(process.pid, 2)
    process.kill()
    process.wait()
    assert_all_dead(workers)


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def wait_for_children(pid: int, count: int, timeout: float = 300) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = children(pid)
        if len(found) >= count:
            return found
        time.sleep(0.1)
    pytest.fail(f"no {count} worker processes appeared")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def assert_all_dead(pids: list[int], timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], "DataLoader workers survived their parent"


# ----------------------------------------------------------------------------- silently wrong output


def test_5_stale_records_are_never_merged(tmp_path, capsys):
    picture(tmp_path / "photos" / "a.png")
    out = tmp_path / "out"
    journal = out / ".normgrad" / "journal"
    journal.mkdir(parents=True)
    ghost = {"type": "image", "run": "20200101T000000Z-dead", "name": "ghost", "image": "ghost.png", "outputs": []}
    (journal / "20200101T000000Z-dead.rank1.jsonl").write_text(json.dumps(ghost) + "\n")  # a killed torchrun's rank 1
    (out / "records.rank1.jsonl").write_text(json.dumps({"index": 0, "stem": "ghost"}) + "\n")  # normgrad 0.1's format
    code, _, err = explain(capsys, tmp_path / "photos", "--out", out)
    assert code == 2 and "already holds normgrad results" in err  # a plain run does not mix with them
    code, _, err = explain(capsys, tmp_path / "photos", "--out", out, "--overwrite")
    assert code == 0, err
    assert [r["name"] for r in summary(out)["images"]] == ["a"] and not list(journal.iterdir())


def test_6_and_13_resume_redoes_changed_inputs_and_damaged_outputs(tmp_path, capsys):
    folder = tmp_path / "photos"
    for i, name in enumerate("abcde"):
        picture(folder / f"{name}.png", seed=i)
    out = tmp_path / "out"
    assert explain(capsys, folder, "--out", out)[0] == 0
    mtimes = {f: (out / f).stat().st_mtime_ns for f in outputs(out) if f != "summary.json"}
    picture(folder / "a.png", size=(40, 48), seed=9)  # a different image under an old name
    old = os.stat(folder / "b.png")
    picture(folder / "b.png", seed=10)  # same size, mtime put back as `cp -p` would: its ctime still changes
    os.utime(folder / "b.png", ns=(old.st_atime_ns, old.st_mtime_ns))
    (out / "c.npy").unlink()  # deleted after the run
    (out / "d.png").write_bytes((out / "d.png").read_bytes()[:50])  # truncated after the run
    code, out_text, err = explain(capsys, folder, "--out", out, "--resume")
    assert code == 0, err
    assert np.load(out / "a.npy").shape == (48, 40) and Image.open(out / "d.png").size == (48, 40) and (out / "c.npy").exists()
    redone = {f for f, mtime in mtimes.items() if (out / f).stat().st_mtime_ns != mtime}
    assert redone == {f"{name}.{kind}" for name in "abcd" for kind in ("png", "npy")}  # e untouched
    entry = {r["name"]: r for r in summary(out)["images"]}["a"]
    assert entry["input"]["bytes"] == (folder / "a.png").stat().st_size and entry["size"] == [40, 48]
    now = {f: (out / f).stat().st_mtime_ns for f in mtimes}
    assert explain(capsys, folder, "--out", out, "--resume")[0] == 0  # nothing left to do: nothing rewritten
    assert all((out / f).stat().st_mtime_ns == mtime for f, mtime in now.items())


def test_7_outputs_inside_the_input_folder_are_never_explained(tmp_path, capsys):
    folder = tmp_path / "photos"
    picture(folder / "a.png")
    picture(folder / "sub" / "b.png", seed=1)
    out = folder / "maps"
    assert explain(capsys, folder, "--out", out)[0] == 0
    for argv in ([folder, "--resume"], [f"{folder}/**/*.png", "--resume"]):
        code, _, err = explain(capsys, *argv[:1], "--out", out, *argv[1:])
        assert code == 0, err
        assert [r["name"] for r in summary(out)["images"]] == ["a", "sub/b"]
    code, _, err = explain(capsys, out / "a.png", folder / "a.png", "--out", out, "--resume")  # an output given by name
    assert code == 1 and "an output normgrad wrote" in err and err.count("\n") == 1


def test_8_failed_images_are_retried(tmp_path, capsys):
    folder = tmp_path / "photos"
    picture(folder / "good.png")
    (folder / "broken.png").write_bytes(b"not yet")
    out = tmp_path / "out"
    code, _, err = explain(capsys, folder, "--out", out)
    assert code == 1 and err.count("\n") == 1 and "broken.png" in err
    assert [r["name"] for r in summary(out)["failed"]] == ["broken"]
    code, _, err = explain(capsys, folder, "--out", out, "--resume")
    assert code == 1 and "broken.png" in err  # retried, still broken: still exit 1
    picture(folder / "broken.png", seed=5)  # fixed
    code, _, err = explain(capsys, folder, "--out", out, "--resume")
    assert code == 0, err
    assert [r["name"] for r in summary(out)["images"]] == ["broken", "good"] and summary(out)["failed"] == []


def test_9_non_finite_lr_and_maps_are_refused(tmp_path, capsys):
    photo = picture(tmp_path / "cat.png")
    out = tmp_path / "out"
    model = ["--model", "torchvision:resnet18", "--weights", "none", "--workers", "0", "--layers", "layer3,layer4"]
    with pytest.raises(SystemExit) as info:  # an argparse error: one line, exit 2
        explain(capsys, photo, "--out", out, "--method", "meta", "--lr", "inf", *model, fast=False)
    err = capsys.readouterr().err
    assert info.value.code == 2 and one_line(err) and "--lr: must be a finite number" in err and not out.exists()
    code, _, err = explain(capsys, photo, "--out", out, "--method", "meta", "--lr", "1e10", *model, fast=False)
    assert code == 1 and err.count("\n") == 1 and "NaN or infinite" in err
    manifest = summary(out)  # strict JSON
    assert manifest["lr"] == 1e10 and manifest["images"] == [] and len(manifest["failed"]) == 1


def test_10_symlink_loops_are_walked_once(tmp_path, capsys):
    folder = tmp_path / "photos"
    picture(folder / "sub" / "cat.png")
    (folder / "sub" / "loop").symlink_to(folder)
    (folder / "again").symlink_to(folder / "sub")
    out = tmp_path / "out"
    for argv in ([f"{folder}/**/*.png"], [folder]):
        code, _, err = explain(capsys, *argv, "--out", out, "--overwrite")
        assert code == 0, err
        assert len(summary(out)["images"]) == 1


def test_11_nan_pixels_and_oversized_images_are_skipped_one_line_each(tmp_path, capsys):
    folder = tmp_path / "photos"
    picture(folder / "good.png")
    values = np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(40, 48)
    values[5, 5] = np.nan
    Image.fromarray(values, mode="F").save(folder / "nan.tif")
    Image.new("RGB", (3000, 6)).save(folder / "strip.png")
    from test_pipeline import png_header_only

    png_header_only(folder / "bomb.png", 15000, 12000)
    code, _, err = explain(capsys, folder, "--out", tmp_path / "out")
    assert code == 1 and err.count("\n") == 3 and "Traceback" not in err
    assert "NaN" in err and "aspect ratio of 500:1" in err and "bomb.png' is larger than" in err
    assert [r["name"] for r in summary(tmp_path / "out")["images"]] == ["good"]


# ----------------------------------------------------------------------------- one line, not a traceback


def test_run_level_errors_are_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import normgrad.models

    photo = picture(tmp_path / "cat.png")
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(normgrad.models, "load", lambda *a, **k: pytest.fail("the model must not load"))
    cases = [
        (["--out", tmp_path / "file"], "is a file"),
        (["--device", "tpu"], "--device"),
        (["--method", "normgard"], "did you mean 'normgrad'"),
        (["--method", "gradient", "--lr", "0.01"], "--lr"),
        (["--method", "gradient", "--steps", "2"], "--steps"),
        (["--method", "center", "--layers", "layer4"], "--layers does not apply"),
        (["--method", "center", "--target", "3"], "--target does not apply"),
        (["--target", "-1"], "negative"),
        (["--weights", tmp_path / "missing.pth"], "does not exist"),
    ]
    for argv, message in cases:
        code = main(["explain", str(photo), "--model", "torchvision:resnet18", "--out", str(tmp_path / "out"), *map(str, argv)])
        err = capsys.readouterr().err
        assert code == 2 and one_line(err) and message in err, (argv, err)
    for size in ("-5", "0"):
        with pytest.raises(SystemExit) as info:
            main(["layers", "torchvision:resnet18", "--size", size])
        err = capsys.readouterr().err
        assert info.value.code == 2 and one_line(err) and "--size" in err
    assert not (tmp_path / "out").exists()


def test_model_checked_names_leave_no_output_folder(tmp_path, capsys):
    photo = picture(tmp_path / "cat.png")
    out = tmp_path / "out"
    base = ["--model", "torchvision:resnet18", "--weights", "none", "--workers", "0"]
    for argv, message in (
        (["--layers", "layer9"], "unknown layer 'layer9'; closest names"),
        (["--target", "tiger kat"], "closest names: 'tiger cat'"),
        (["--target", "1000"], "out of range"),
    ):
        code, _, err = explain(capsys, photo, "--out", out, *base, *argv, fast=False)
        assert code == 2 and one_line(err) and message in err
        assert not out.exists()


def tmpfs(path: Path, size: str):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")


def test_full_and_read_only_file_systems(tmp_path, capsys):
    folder = tmp_path / "photos"
    for i in range(6):
        picture(folder / f"img{i}.png", size=(300, 200), seed=i)
    disk = tmp_path / "disk"
    tmpfs(disk, "300k")
    try:
        code, _, err = explain(capsys, folder, "--out", disk / "out")
        assert code == 2 and err.count("normgrad: error") == 1 and "the disk is full" in err and "Traceback" not in err
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
        code, _, err = explain(capsys, folder, "--out", disk / "out", "--resume")
        assert code == 0, err
        assert len(summary(disk / "out")["images"]) == 6
        assert all(np.load(p).shape == (200, 300) for p in (disk / "out").glob("*.npy"))
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        code, _, err = explain(capsys, folder, "--out", disk / "other")
        assert code == 2 and one_line(err) and "read-only" in err
    finally:
        subprocess.run(["umount", str(disk)])


def test_resume_with_other_settings(tmp_path, capsys):
    picture(tmp_path / "photos" / "a.png")
    out = tmp_path / "out"
    assert explain(capsys, tmp_path / "photos", "--out", out)[0] == 0
    other = ["--model", "torchvision:resnet18", "--weights", "none", "--workers", "0", "--method", "random"]
    code, _, err = explain(capsys, tmp_path / "photos", "--out", out, "--resume", *other, fast=False)
    assert code == 2 and one_line(err) and "other settings" in err
    code, _, err = explain(capsys, tmp_path / "photos", "--out", out, "--resume", "--overwrite", *other, fast=False)
    assert code == 0, err
    assert summary(out)["method"] == "random" and summary(out)["images"][0]["run"] == summary(out)["run"]
