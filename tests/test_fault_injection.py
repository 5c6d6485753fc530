"""Kill `normgrad explain` (SIGKILL) at chosen and at random points, then --resume: every image exactly once, every file valid,
no temporary file or journal left, no DataLoader worker alive."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from normgrad.cli import main
from test_output_contract import FAST, SRC, assert_all_dead, children, picture, wait_for_children

SIZES = [(48, 40), (40, 48), (56, 40), (48, 40), (40, 48), (64, 48)]

# In the killed process only: SIGKILL itself at the n-th call of a store function, before or after it runs, or mid-line.
INJECT = textwrap.dedent("""
    import os, signal, sys
    import normgrad.store as store
    where, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    owner, name, when = where.split(":")
    cls = {"journal": store.JsonLines, "store": store.OutputStore}[owner]
    original = getattr(cls, name)
    calls = 0

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def injected(self, *args, **kwargs):
        global calls
        calls += 1
        if calls != nth:
            return original(self, *args, **kwargs)
        if when == "before":
            die()
        if when == "torn":  # half a journal line reaches the file (under the journal's lock, as in append: no writer
            line = (store.dumps(args[0]) + "\\n").encode()  # thread can complete another line before the kill)
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644, dir_fd=self.dir_fd)
                os.write(fd, line[: len(line) // 2])
                die()
        if when == "temporary":  # a temporary file is complete, the rename has not happened
            fd = os.open(f"{self.run}.{self.rank}.{os.getpid()}.killed.tmp", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=self._tmp)
            os.write(fd, b"partial")
            die()
        result = original(self, *args, **kwargs)
        die()  # "after"
        return result

    setattr(cls, name, injected)
    from normgrad.cli import main
    sys.exit(main(argv))
""")


def make_photos(folder: Path) -> dict[str, tuple[int, int]]:
    for i, size in enumerate(SIZES):
        picture(folder / ("a" if i % 2 else "b") / f"img{i}.png", size=size, seed=i)
    return {f"{'a' if i % 2 else 'b'}/img{i}": size for i, size in enumerate(SIZES)}


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def argv(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["explain", str(folder), "--out", str(out), *FAST, "--batch-size", "2", *extra]


def check_complete(out: Path, expected: dict[str, tuple[int, int]]) -> None:
    """Exactly the expected files, each valid; the manifest lists each image once; nothing half-done is left."""
    files = {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and not {".normgrad", "gallery", "index.html"} & set(p.relative_to(out).parts)
    }
    assert files == {f"{name}.{kind}" for name in expected for kind in ("png", "npy")} | {"summary.json"}
    chunks = [path.read_text() for path in sorted((out / "gallery" / "data").glob("chunk-*.js"))]
    gallery = [item for text in chunks for item in json.loads(text[text.index(",") + 1 : -3])]
    assert sorted(item["name"] for item in gallery) == sorted(expected)  # the gallery: each image once, every picture there
    assert all((out / f).is_file() for item in gallery for f in (item["thumb"], item["photo"], *(m["view"] for m in item["maps"])))
    for name, (width, height) in expected.items():
        saliency = np.load(out / f"{name}.npy")
        assert saliency.shape == (height, width) and np.isfinite(saliency).all()
        with Image.open(out / f"{name}.png") as image:
            image.verify()
        assert Image.open(out / f"{name}.png").size == (width, height)
    manifest = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert [r["name"] for r in manifest["images"]] == sorted(expected)
    assert manifest["failed"] == [] and manifest["interrupted"] == []
    for record in manifest["images"]:
        assert all((out / o[kind]).stat().st_size == o[f"{kind}_bytes"] for o in record["outputs"] for kind in ("png", "npy"))
    assert not list((out / ".normgrad" / "tmp").iterdir()) and not list((out / ".normgrad" / "journal").iterdir())


def killed_at(tmp_path: Path, where: str, nth: int, capsys) -> None:
    folder, out = tmp_path / "photos", tmp_path / "out"
    expected = make_photos(folder)
    run = subprocess.run(
        [sys.executable, "-c", INJECT, where, str(nth), *argv(folder, out)], env=environment(), capture_output=True, timeout=600
    )
    assert run.returncode == -signal.SIGKILL, run.stderr.decode()[-2000:]
    if where.endswith(":torn"):
        (journal,) = (out / ".normgrad" / "journal").glob("*.jsonl")
        assert not journal.read_bytes().endswith(b"\n")  # the fault happened: a line cut in half
    assert main(argv(folder, out, "--resume")) == 0, capsys.readouterr().err
    check_complete(out, expected)


@pytest.mark.parametrize(
    "where, nth",
    [
        ("journal:append:torn", 5),  # the 2nd image's record cut in half (lines: header, claim, record, claim, record)
        ("store:write:after", 5),  # outputs in place, no record yet: redone, its files are normgrad's
    ],
)
def test_killed_then_resumed(tmp_path, where, nth, capsys):
    killed_at(tmp_path, where, nth, capsys)


@pytest.mark.slow
@pytest.mark.parametrize(
    "where, nth",
    [
        ("journal:append:before", 1),  # before the run header
        ("journal:append:before", 2),  # before the first claim
        ("journal:append:after", 3),  # the first claim written, no file yet
        ("journal:append:torn", 2),
        ("store:write:before", 1),
        ("store:write:temporary", 3),
        ("store:write:after", 12),  # the last output, before its record
        ("store:write_manifest:before", 1),  # in begin
        ("store:write_manifest:after", 1),
        ("store:write_manifest:before", 2),  # in the merge
        ("store:write_manifest:after", 2),  # merged, journals not yet removed
    ],
)
def test_killed_anywhere_then_resumed(tmp_path, where, nth, capsys):
    killed_at(tmp_path, where, nth, capsys)


def random_kills(tmp_path: Path, seed: int, kills: int, capsys, writers: int = 2) -> None:
    """Start with two workers, SIGKILL at a random moment once writing has begun, check no worker survives; repeat; resume.

    The model's batches are paced (the readers stay alive) and so is each image's rendering in the writer threads
    (with ``writers`` ≥ 2, several images are being written when the kill comes)."""
    rng = random.Random(seed)
    folder, out = tmp_path / "photos", tmp_path / "out"
    expected = make_photos(folder)
    slow = textwrap.dedent("""
        import sys, time
        import normgrad.run.api as api
        import normgrad.run.loop as loop
        def paced(original, seconds):
            def slowly(*args, **kwargs):
                time.sleep(seconds)
                return original(*args, **kwargs)
            return slowly
        api.outputs = paced(api.outputs, 0.5)
        loop.pipeline.explain_batch = paced(loop.pipeline.explain_batch, 0.5)
        from normgrad.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    for k in range(kills):
        flags = ["--workers", "2", "--writers", str(writers), *(["--resume"] if k else [])]  # given last: they override FAST's
        process = subprocess.Popen(
            [sys.executable, "-c", slow, *argv(folder, out, *flags)],
            env=environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 300
        while time.time() < deadline and not list((out / ".normgrad" / "journal").glob("*.jsonl")) and process.poll() is None:
            time.sleep(0.02)
        workers = wait_for_children(process.pid, 2) if k == 0 else children(process.pid)  # the first run: readers started
        time.sleep(rng.uniform(0.0, 1.5))
        workers += children(process.pid)
        process.send_signal(signal.SIGKILL)
        assert process.wait() in ((-signal.SIGKILL,) if k == 0 else (-signal.SIGKILL, 0))  # killed mid-run (later runs may finish)
        assert workers or k, "no DataLoader worker was running"
        assert_all_dead(workers)
    assert main(argv(folder, out, "--resume")) == 0, capsys.readouterr().err
    check_complete(out, expected)


def test_random_kills_then_resume(tmp_path, capsys):
    random_kills(tmp_path, seed=0, kills=2, capsys=capsys)


def test_killed_while_writers_write_concurrently(tmp_path, capsys):
    """Three writer threads, batches of 2 (so images of two batches are being written at once): killed mid-write, resumed."""
    random_kills(tmp_path, seed=7, kills=3, capsys=capsys, writers=3)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 6))
def test_many_random_kills_then_resume(tmp_path, seed, capsys):
    random_kills(tmp_path, seed=seed, kills=4, capsys=capsys)
