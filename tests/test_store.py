"""The output store on its own: names, atomic writes, symlinks, the lock, JSON lines, the manifest and resume decisions."""

import errno
import json
import os
import shutil

import pytest

from normgrad.store import (
    JsonLines,
    Manifest,
    OutputConflict,
    OutputStore,
    StoreError,
    atomic_write,
    identity,
    output_names,
    precheck,
    weights_identity,
)
from normgrad.store.folders import FolderCache


def two_files(name):
    return [f"{name}.png", f"{name}.npy"]


@pytest.fixture
def store(tmp_path):
    """A run's store on a fresh folder ``tmp_path / "out"``, closed after the test."""
    store = OutputStore(tmp_path / "out", "run1")
    yield store
    store.close()


@pytest.mark.parametrize(
    "inputs, reserved, expected",
    [
        # issue case 2: files given by name share their common folder, so a/cat and b/cat stay apart from cat-1
        ([("same/a/cat.jpg", "same"), ("same/b/cat.jpg", "same"), ("same/cat-1.jpg", "same")], [], ["a/cat", "b/cat", "cat-1"]),
        # the same stem twice in one folder: both keep their suffix
        ([("d/cat.jpg", "d"), ("d/cat.png", "d"), ("d/dog.jpg", "d")], [], ["cat.jpg", "cat.png", "dog"]),
        # still colliding: ~2 in input order
        ([("d/cat.jpg", "d"), ("d/cat.png", "d"), ("d/cat.jpg.png", "d")], [], ["cat.jpg", "cat.png", "cat.jpg~2"]),
        ([("x/a.jpg", "x"), ("y/a.jpg", "y")], [], ["a.jpg", "a.jpg~2"]),
        # case-insensitive file systems: Cat and cat are one file
        ([("d/Cat.png", "d"), ("d/cat.jpg", "d")], [], ["Cat.png", "cat.jpg"]),
        # a file may not take a folder's name
        ([("d/x.png/y.jpg", "d"), ("d/x.jpg", "d")], [], ["x.png/y.jpg", "x.jpg"]),
        # issue case 1: an input inside the output folder is never an output's name
        ([("d/cat.png", "d")], ["cat.png"], ["cat.png"]),
        # the store's own folder is never an output
        ([("d/.normgrad/y.jpg", "d")], [], ["_.normgrad/y.jpg"]),
    ],
)
def test_output_names_are_collision_free(inputs, reserved, expected):
    names = output_names(inputs, two_files, reserved)
    assert names == expected
    files = [f.casefold() for name in names for f in two_files(name)]
    assert len(files) == len(set(files)) and not set(files) & {r.casefold() for r in reserved}


def test_per_layer_files_take_part_in_the_names():
    def per_layer(name):
        return [f"{name}_{layer}.npy" for layer in ("x", "x_y")]

    names = output_names([("d/cat.jpg", "d"), ("d/cat_x.jpg", "d")], per_layer)  # cat_x_y.npy twice
    files = [f for name in names for f in per_layer(name)]
    assert len(files) == len(set(files))


def test_writes_are_atomic_stay_inside_and_never_follow_symlinks(tmp_path, store):
    out, outside = store.out, tmp_path / "precious.txt"
    outside.write_text("precious")
    assert store.write("a/b/x.npy", b"12345") == 5 and (out / "a" / "b" / "x.npy").read_bytes() == b"12345"
    with pytest.raises(OutputConflict, match="did not write"):
        store.write("a/b/x.npy", b"other")  # replace=False
    assert store.write("a/b/x.npy", b"other", replace=True) == 5
    (out / "link.png").symlink_to(outside)
    with pytest.raises(OutputConflict, match="a symlink"):
        store.write("link.png", b"png")
    store.write("link.png", b"png", replace=True)  # --overwrite: the link is replaced, its target untouched
    assert outside.read_text() == "precious" and not (out / "link.png").is_symlink()
    (out / "linked").symlink_to(tmp_path)  # a symlinked folder is never written through
    with pytest.raises(OutputConflict, match="not a plain folder"):
        store.write("linked/x.png", b"png", replace=True)
    for bad in ("../x.png", "/etc/x.png", "a/../../x.png"):
        with pytest.raises(OutputConflict, match="leave the output folder"):
            store.write(bad, b"png", replace=True)
    (out / "dir.png").mkdir()
    with pytest.raises(OutputConflict, match="a folder"):
        store.write("dir.png", b"png", replace=True)
    assert not list((out / ".normgrad" / "tmp").iterdir())  # no temporary file left behind
    assert not (tmp_path / "x.png").exists()


def test_a_folder_removed_during_the_run_is_made_again_on_the_next_write(store):
    out = store.out
    store.write("a/b/x.npy", b"1")
    shutil.rmtree(out / "a")
    assert store.write("a/b/y.npy", b"22") == 2 and (out / "a" / "b" / "y.npy").read_bytes() == b"22"


def test_a_folder_swapped_for_a_symlink_during_the_run_is_never_written_through(tmp_path, store):
    out, outside = store.out, tmp_path / "outside"
    outside.mkdir()
    store.write("a/b/x.npy", b"1")
    (out / "a" / "b").rename(out / "a" / "moved")
    (out / "a" / "b").symlink_to(outside)
    with pytest.raises(OutputConflict, match="not a plain folder"):
        store.write("a/b/y.npy", b"2")
    assert not list(outside.iterdir()) and not (out / "a" / "moved" / "y.npy").exists()


def test_a_file_lands_at_its_path_after_its_folder_was_renamed_during_the_run(store):
    out = store.out
    store.write("a/b/x.npy", b"1")
    (out / "a" / "b").rename(out / "a" / "moved")
    store.write("a/b/y.npy", b"2")  # where its record will say it is, not in the renamed folder
    assert (out / "a" / "b" / "y.npy").read_bytes() == b"2" and not (out / "a" / "moved" / "y.npy").exists()


def test_the_folder_cache_keeps_a_bounded_number_of_descriptors(tmp_path):
    open_fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        cache = FolderCache(root, tmp_path, size=3)
        before = open_fds()
        for k in range(20):
            os.close(cache.dup(f"d{k}/e"))
        assert open_fds() - before == 3 and sorted(p.name for p in tmp_path.iterdir()) == sorted(f"d{k}" for k in range(20))
        cache.close()
        assert open_fds() == before
    finally:
        os.close(root)


def test_a_full_or_read_only_folder_stops_the_run(tmp_path, monkeypatch, store):
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StoreError, match="the disk is full"):
        store.write("x.npy", b"data")
    monkeypatch.setattr(os, "write", real_write)
    assert not list((tmp_path / "out" / ".normgrad" / "tmp").iterdir()) and not (tmp_path / "out" / "x.npy").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        precheck(tmp_path / "file")
    with pytest.raises(StoreError, match="is a file"):
        OutputStore(tmp_path / "file", "run2")
    monkeypatch.setattr(os, "statvfs", lambda path: type("S", (), {"f_flag": os.ST_RDONLY})())
    with pytest.raises(StoreError, match="read-only"):
        precheck(tmp_path / "new")


def test_the_lock_admits_one_run(tmp_path):
    first, second = OutputStore(tmp_path, "run1"), OutputStore(tmp_path, "run2")
    try:
        first.lock()
        with pytest.raises(StoreError, match=r"another normgrad run is writing .*run run1, pid"):
            second.lock()
        with pytest.raises(StoreError, match="another normgrad run"):
            precheck(tmp_path)
        first.unlock()
        second.lock()  # free again
        precheck(tmp_path / "elsewhere")
    finally:
        first.close()
        second.close()


def test_json_lines_a_torn_line_never_swallows_the_next(tmp_path):
    path = tmp_path / "log.jsonl"
    with JsonLines(path) as log:
        log.append({"n": 1})
        log.append({"n": 2})
    with open(path, "ab") as file:
        file.write(b'{"n": 3, "cut by a ki')  # issue case 12: a kill between two writes
    with JsonLines(path) as log:
        log.append({"n": 4})
    assert JsonLines(path).read() == [{"n": 1}, {"n": 2}, {"n": 4}]
    with pytest.raises(ValueError):
        JsonLines(path).append({"x": float("nan")})  # strict JSON
    assert JsonLines(tmp_path / "absent.jsonl").read() == []


def test_atomic_write_of_single_files(tmp_path):
    target = tmp_path / "sub" / "result.json"
    atomic_write(target, b"1")
    with pytest.raises(Exception, match="already exists"):
        atomic_write(target, b"2")
    atomic_write(target, b"2", replace=True)
    assert target.read_bytes() == b"2" and [p.name for p in target.parent.iterdir()] == ["result.json"]
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    (tmp_path / "link.json").symlink_to(precious)
    atomic_write(tmp_path / "link.json", b"3", replace=True)
    assert precious.read_text() == "precious"


SETTINGS = {"method": "normgrad"}


def plan(store, paths, resume=False, overwrite=False, settings=SETTINGS):
    return store.begin(settings, [(str(p), str(p.parent)) for p in paths], two_files, resume=resume, overwrite=overwrite)


def finish_image(store, name, path, outputs):
    store.journal.append({"type": "claim", "run": store.run, "name": name, "files": outputs})
    sizes = {f: store.write(f, f.encode(), replace=True) for f in outputs}
    store.journal.append({"type": "image", "run": store.run, "name": name, "image": str(path), "input": identity(path),
                          "outputs": [{"layer": "combined", "png": outputs[0], "npy": outputs[1],
                                       "png_bytes": sizes[outputs[0]], "npy_bytes": sizes[outputs[1]]}]})  # fmt: skip


def test_resume_decisions_by_identity_and_outputs(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in "abcd":
        (images / f"{name}.jpg").write_bytes(name.encode() * 10)
    out = tmp_path / "out"

    def items():
        return [images / f"{n}.jpg" for n in "abcd"]

    store = OutputStore(out, "run1")
    first = plan(store, items())
    assert [(w.index, w.name) for w in first.work] == list(enumerate("abcd"))
    for w in first.work:
        finish_image(store, w.name, w.path, w.files)
    store.journal.close()
    store.finish(1)
    store.close()
    manifest = json.loads((out / "summary.json").read_text())
    assert manifest["format"] == "normgrad-explain" and [e["name"] for e in manifest["images"]] == list("abcd")

    (images / "a.jpg").write_bytes(b"another image")  # issue case 6: a different image under an old name
    stat_b = os.stat(images / "b.jpg")
    (images / "b.jpg").write_bytes(b"B" * 10)  # same size, mtime put back (cp -p): the ctime still tells
    os.utime(images / "b.jpg", ns=(stat_b.st_atime_ns, stat_b.st_mtime_ns))
    (out / "c.npy").unlink()  # issue case 13: an output deleted after the run
    store = OutputStore(out, "run2")
    with pytest.raises(StoreError, match="already holds normgrad results"):
        plan(store, items())  # a plain run never mixes into earlier results
    resumed = plan(store, items(), resume=True)
    store.close()
    assert [w.name for w in resumed.work] == ["a", "b", "c"] and resumed.done == ["d"]
    assert set(resumed.work[2].replace) == {"c.png"}  # its own file, replaced

    store = OutputStore(out, "run3")
    with pytest.raises(StoreError, match="other settings"):
        plan(store, items(), resume=True, settings={"method": "gradient"})
    redo = plan(store, items(), resume=True, overwrite=True, settings={"method": "gradient"})
    store.close()
    assert len(redo.work) == 4  # --resume --overwrite: what differs is redone


def test_outputs_given_as_inputs_are_skipped(tmp_path):
    out = tmp_path / "out"
    store = OutputStore(out, "run1")
    first = plan(store, [tmp_path / "a.jpg"])
    finish_image(store, "a", first.work[0].path, first.work[0].files)
    store.journal.close()
    store.finish(1)
    store.close()
    store = OutputStore(out, "run2")
    again = store.begin(SETTINGS, [(str(out / "a.png"), str(out)), (str(tmp_path / "a.jpg"), str(tmp_path))], two_files,
                        resume=True, overwrite=False)  # fmt: skip
    store.close()
    assert again.skipped == [(str(out / "a.png"), "it is an output normgrad wrote into --out; never explained again")]
    assert again.work == [] and again.done == ["a"]  # its name is not pushed aside by the skipped output


def test_files_normgrad_did_not_write_are_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"the user's")
    store = OutputStore(out, "run1")
    with pytest.raises(StoreError, match="normgrad did not write it"):
        plan(store, [tmp_path / "a.jpg"])
    again = plan(store, [tmp_path / "a.jpg"], overwrite=True)
    store.close()
    assert again.work[0].replace == ["a.png"]


def test_stale_journals_are_never_merged_by_a_fresh_run(tmp_path):
    """Issue case 5: records left by an earlier (killed) torchrun must not enter a later run's summary."""
    out = tmp_path / "out"
    store = OutputStore(out, "old")
    plan(store, [])
    store.journal.append({"type": "image", "run": "old", "name": "ghost", "outputs": []})
    store.close()
    store = OutputStore(out, "new")
    with pytest.raises(StoreError, match="already holds"):
        plan(store, [])
    plan(store, [tmp_path / "x.jpg"], overwrite=True)
    store.journal.close()
    manifest = store.finish(1)
    store.close()
    assert "ghost" not in manifest.entries and not list((out / ".normgrad" / "journal").iterdir())
    fenced = Manifest()
    fenced.apply([{"type": "image", "run": "other", "name": "ghost"}], only_run="new")
    assert fenced.entries == {}


def test_foreign_or_damaged_manifests_are_refused(tmp_path):
    (tmp_path / "summary.json").write_text('{"model": "from normgrad 0.1"}')
    store = OutputStore(tmp_path, "run1")
    try:
        with pytest.raises(StoreError, match="not a normgrad-explain manifest"):
            plan(store, [], resume=True)
        plan(store, [], overwrite=True)
    finally:
        store.close()


def test_save_commits_claim_then_files_then_record(tmp_path, store):
    (work,) = plan(store, [tmp_path / "a.jpg"]).work
    with pytest.raises(OutputConflict, match="not among the files planned"):
        store.save(work, {"../evil.png": b"x"}, {"type": "image", "run": "run1", "name": "a"})
    with pytest.raises(ValueError):
        store.save(work, {"a.png": b"x"}, {"type": "image", "run": "run1", "name": "a", "p": float("nan")})
    assert store.journal.read() == [] and not (tmp_path / "out" / "a.png").exists()  # refused before anything was written
    store.save(work, {"a.png": b"png", "a.npy": b"npy"}, {"type": "image", "run": "run1", "name": "a"})
    claim, record = store.journal.read()
    assert claim == {"type": "claim", "run": "run1", "name": "a", "image": None, "files": ["a.png", "a.npy"]}
    assert record["type"] == "image" and (tmp_path / "out" / "a.npy").read_bytes() == b"npy"


def test_a_replaced_weights_file_of_the_same_size_with_its_mtime_kept_is_noticed(tmp_path):
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"first model" * 100)
    before, info = weights_identity(weights), os.stat(weights)
    weights.write_bytes(b"other model" * 100)  # same size
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns))  # mtime put back (rsync -t, archives)
    assert os.stat(weights).st_size == info.st_size and os.stat(weights).st_mtime_ns == info.st_mtime_ns
    assert weights_identity(weights) != before
    replacement = tmp_path / "new.pth"
    replacement.write_bytes(b"first model" * 100)
    os.replace(replacement, weights)  # the first bytes back, as another file: the same weights
    assert weights_identity(weights) == before
    assert weights_identity("none") == "none" and weights_identity(None) == "none" and weights_identity("default") == "default"
