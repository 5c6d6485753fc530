"""normgrad.open_run: a run folder read lazily (settings, records, predictions, maps by name, index and layer), the same
in both storages, every map checked, one clear error for what is not a run."""

import errno
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import normgrad as ng
from normgrad.store import OutputStore, encode_npy, identity

SETTINGS = {"model": "tiny", "method": "normgrad", "layers": ["layer4"]}
STORAGES = ["files", "shards"]


def files_of(name):
    return [f"{name}.png", f"{name}.npy", f"{name}_layer4.png", f"{name}_layer4.npy"]


def image_maps(name, size, dtype):
    """The combined and layer4 maps of an image, distinct per name (``size``: width, height)."""
    rng = np.random.default_rng(sum(map(ord, name)))
    return {layer: rng.random((size[1], size[0])).astype(dtype) for layer in ("combined", "layer4")}


def commit(store, work, size, dtype="float32"):
    """What a writer thread does for one image: its overlay and map files, and its record, through the store."""
    maps = image_maps(work.name, size, dtype)
    files, outputs = {}, []
    for layer, plane in maps.items():
        stem = work.name if layer == "combined" else f"{work.name}_{layer}"
        files[f"{stem}.png"], files[f"{stem}.npy"] = b"png of " + stem.encode(), encode_npy(plane)
        outputs.append({"layer": layer, "png": f"{stem}.png", "png_bytes": len(files[f"{stem}.png"]), "npy": f"{stem}.npy",
                        "npy_bytes": len(files[f"{stem}.npy"])})  # fmt: skip
    record = {"type": "image", "run": store.run, "rank": store.rank, "name": work.name, "image": work.path, "input": identity(work.path),
              "size": list(size), "layers": ["layer4"], "outputs": outputs,
              "predictions": [{"class": 3, "name": f"class of {work.name}", "probability": 0.75}],
              "target": {"class": 3, "name": f"class of {work.name}", "probability": 0.75}}  # fmt: skip
    store.save(work, files, record)
    return maps


def photos(folder, names):
    """Inputs: any bytes will do (the store never decodes them); sizes differ per image."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.jpg").write_bytes(name.encode() * 10)
    return [(str(folder / f"{name}.jpg"), str(folder)) for name in names]


def size_of(name):
    return (5 + len(name) % 3, 4 + ord(name[-1]) % 4)


def write_run(out, inputs, storage, run="run1", resume=False, dtype="float32", threads=4, finish=True):
    """A run through the store as explain makes it (several writer threads); the maps written, by name."""
    store = OutputStore(out, run, storage=storage)
    try:
        plan = store.begin(SETTINGS, inputs, files_of, resume=resume, overwrite=False)
        with ThreadPoolExecutor(threads) as pool:
            written = dict(zip([w.name for w in plan.work], pool.map(lambda w: commit(store, w, size_of(w.name), dtype), plan.work)))
        store.journal.close()
        if finish:
            store.finish(1)
    finally:
        store.close()
    return written


@pytest.mark.parametrize("storage", STORAGES)
def test_the_reader_gives_settings_records_predictions_and_maps(tmp_path, storage):
    names = ["cat", "dog", "owl", "yak"]
    written = write_run(tmp_path / "out", photos(tmp_path / "in", names), storage)
    with ng.open_run(tmp_path / "out") as run:
        assert run.settings == SETTINGS | ({"storage": "shards"} if storage == "shards" else {}) and run.storage == storage
        assert len(run) == 4 and run.names == names and [r.name for r in run] == names
        assert run.predictions["owl"] == [{"class": 3, "name": "class of owl", "probability": 0.75}]
        record = run["dog"]
        assert record.size == size_of("dog") and record.target["name"] == "class of dog" and record.maps == ["combined", "layer4"]
        for i, name in enumerate(names):
            for layer in ("combined", "layer4"):
                expected = written[name][layer]
                assert np.array_equal(run.map(name, layer=None if layer == "combined" else layer), expected)
                assert np.array_equal(run.map(i, layer=layer), expected) and run.map(i, layer=layer).dtype == expected.dtype
        assert np.array_equal(run[-1].map("layer4"), written["yak"]["layer4"])


def test_shards_keep_every_map_of_a_rank_in_one_file(tmp_path):
    names = [f"img{i:03d}" for i in range(40)]
    write_run(tmp_path / "out", photos(tmp_path / "in", names), "shards", dtype="float16", threads=8)
    on_disk = {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert {f for f in on_disk if f.endswith(".npy")} == set() and {f for f in on_disk if f.startswith("shards/")} == {
        "shards/run1.rank0.bin"
    }
    run = ng.open_run(tmp_path / "out")
    ranges = sorted((o["offset"], o["offset"] + o["bytes"]) for r in run for o in r.outputs)
    assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # eight threads, no overlap, no gap
    assert os.path.getsize(tmp_path / "out" / "shards" / "run1.rank0.bin") == ranges[-1][1]
    assert all(run.map(n).dtype == np.float16 for n in names)


@pytest.mark.parametrize("storage", STORAGES)
def test_iterating_the_records_reads_no_map(tmp_path, storage):
    write_run(tmp_path / "out", photos(tmp_path / "in", ["a", "b"]), storage)
    run = ng.open_run(tmp_path / "out")
    for path in [*(tmp_path / "out").glob("*.npy"), *(tmp_path / "out").glob("shards/*")]:
        path.unlink()  # the maps are gone: the records still read, a map does not
    assert [r.predictions[0]["name"] for r in run] == ["class of a", "class of b"]
    with pytest.raises(ng.NormGradError, match="missing"):
        run.map("a")


@pytest.mark.parametrize("storage", STORAGES)
def test_a_damaged_map_is_refused(tmp_path, storage):
    write_run(tmp_path / "out", photos(tmp_path / "in", ["a", "b"]), storage)
    out = tmp_path / "out"
    if storage == "shards":
        shard = out / "shards" / "run1.rank0.bin"
        data = bytearray(shard.read_bytes())
        offset = ng.open_run(out)["a"].outputs[0]["offset"]
        data[offset + 1] ^= 0xFF
        shard.write_bytes(bytes(data))
        expected = "damaged"
    else:
        np.save(out / "a.npy", np.zeros((2, 2), np.float32))  # another shape than the image's
        expected = "shape"
    run = ng.open_run(out)
    with pytest.raises(ng.NormGradError, match=expected):
        run.map("a")
    assert run.map("b").shape == size_of("b")[::-1]  # the other image still reads


def test_a_map_file_replaced_by_a_symlink_or_nan_is_refused(tmp_path):
    write_run(tmp_path / "out", photos(tmp_path / "in", ["a", "b"]), "files")
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere.npy"
    shutil.move(out / "a.npy", elsewhere)
    (out / "a.npy").symlink_to(elsewhere)
    np.save(out / "b.npy", np.full(size_of("b")[::-1], np.nan, np.float32))
    run = ng.open_run(out)
    with pytest.raises(ng.NormGradError, match="cannot read"):
        run.map("a")
    with pytest.raises(ng.NormGradError, match="not finite"):
        run.map("b")


def test_names_indices_and_layers_that_do_not_exist(tmp_path):
    write_run(tmp_path / "out", photos(tmp_path / "in", ["tabby", "tiger"]), "shards")
    run = ng.open_run(tmp_path / "out")
    with pytest.raises(ng.NormGradError, match="no image named 'taby'.*did you mean 'tabby'"):
        run.map("taby")
    with pytest.raises(ng.NormGradError, match="out of range"):
        run.map(2)
    with pytest.raises(ng.NormGradError, match="no map saved for layer 'layer3'.*did you mean 'layer4'"):
        run.map(0, layer="layer3")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.mkdir(), "not a normgrad run folder: it holds no summary.json"),
        (lambda p: None, "is not a folder"),
        (lambda p: p.write_text("a file"), "is not a folder"),
        (lambda p: p.mkdir() or (p / "summary.json").write_text('{"results": []}'), "not a normgrad-explain manifest"),
        (lambda p: p.mkdir() or (p / "summary.json").write_text("{not json"), "not a normgrad-explain manifest"),
        (lambda p: p.mkdir() or (p / "summary.json").write_text('{"format": "normgrad-explain", "version": "1"}'), "version must be"),
    ],
    ids=["empty folder", "missing", "a file", "another program's json", "not json", "damaged"],
)
def test_a_folder_that_is_not_a_run_gets_one_clear_error(tmp_path, make, message):
    make(tmp_path / "out")
    with pytest.raises(ng.NormGradError, match=message) as error:
        ng.open_run(tmp_path / "out")
    assert "\n" not in str(error.value)


def test_a_killed_run_is_read_as_far_as_its_journal_goes(tmp_path):
    """Records not yet merged into summary.json (a run still going, or killed) are read from the journal."""
    write_run(tmp_path / "out", photos(tmp_path / "in", ["a", "b", "c"]), "shards", finish=False)
    run = ng.open_run(tmp_path / "out")
    assert run.names == ["a", "b", "c"] and run.map("c").shape == size_of("c")[::-1]
    assert (tmp_path / "out" / ".normgrad" / "journal" / "run1.rank0.jsonl").exists()  # read, not merged


@pytest.mark.parametrize("storage", STORAGES)
def test_a_writer_may_hand_the_store_arrays(tmp_path, storage):
    """The writer gives the map itself (no .npy encoding of its own): the store encodes it, or appends it to the shard."""
    plane = np.arange(12, dtype=np.float32).reshape(3, 4) / 12
    store = OutputStore(tmp_path / "out", "run1", storage=storage)
    try:
        (work,) = store.begin(SETTINGS, photos(tmp_path / "in", ["a"]), files_of, resume=False, overwrite=False).work
        outputs = [{"layer": "combined", "npy": "a.npy", "npy_bytes": 0}]
        store.save(work, {"a.npy": plane}, {"type": "image", "run": "run1", "name": "a", "size": [4, 3], "outputs": outputs})
        store.journal.close()
        store.finish(1)
    finally:
        store.close()
    run = ng.open_run(tmp_path / "out")
    assert np.array_equal(run.map("a"), plane) and run.map("a").dtype == np.float32
    if storage == "files":
        assert run["a"].outputs[0]["npy_bytes"] == (tmp_path / "out" / "a.npy").stat().st_size


@pytest.mark.parametrize("storage", STORAGES)
def test_a_dataset_explained_into_a_folder_reads_back_as_in_memory(tmp_path, storage):
    from test_run_api import SETTINGS as RUN
    from test_run_api import Tensors
    from test_run_api import photos as pictures

    dataset = Tensors(pictures(tmp_path / "photos"))
    in_memory = ng.explain(dataset, **RUN)
    ng.explain(dataset, tmp_path / "out", storage=storage, verbose=False, **RUN)
    run = ng.open_run(tmp_path / "out")
    assert run.storage == storage and sorted(e.name for e in in_memory.images) == run.names
    for explained in in_memory.images:
        np.testing.assert_array_equal(run.map(explained.name), explained.map)
        assert run[explained.name].predictions == explained.predictions
    maps = sorted(p for p in (tmp_path / "out").rglob("*") if p.suffix in (".npy", ".bin"))
    before = {p: p.stat().st_mtime_ns for p in maps}
    ng.explain(dataset, tmp_path / "out", storage=storage, resume=True, verbose=False, **RUN)  # every image done: none rewritten
    assert sorted(p for p in (tmp_path / "out").rglob("*") if p.suffix in (".npy", ".bin")) == maps
    assert {p: p.stat().st_mtime_ns for p in maps} == before
    assert ng.open_run(tmp_path / "out").names == run.names


def test_a_run_goes_to_dataloader_workers(tmp_path):
    """Pickled (a spawned worker), the reader opens the folder again; maps read from several threads agree."""
    import pickle

    written = write_run(tmp_path / "out", photos(tmp_path / "in", ["a", "b", "c"]), "shards")
    run = pickle.loads(pickle.dumps(ng.open_run(tmp_path / "out")))
    with ThreadPoolExecutor(3) as pool:
        maps = dict(zip("abc", pool.map(run.map, "abc")))
    assert all(np.array_equal(maps[name], written[name]["combined"]) for name in "abc")


def test_a_full_disk_while_appending_to_a_shard_stops_the_run(tmp_path, monkeypatch):
    from normgrad.store import StoreError

    store = OutputStore(tmp_path / "out", "run1", storage="shards")
    try:
        (work,) = store.begin(SETTINGS, photos(tmp_path / "in", ["a"]), files_of, resume=False, overwrite=False).work

        def full(fd, data, offset):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "pwrite", full)
        with pytest.raises(StoreError, match="the disk is full"):
            commit(store, work, (4, 3))
        monkeypatch.undo()
        assert [line["type"] for line in store.journal.read()] == ["claim"]  # no record: the image is redone by --resume
    finally:
        store.close()


def test_a_symlink_in_place_of_the_shards_folder_is_never_written_through(tmp_path):
    from normgrad.store import StoreError

    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "shards").symlink_to(tmp_path / "elsewhere")
    store = OutputStore(tmp_path / "out", "run1", storage="shards")
    try:
        (work,) = store.begin(SETTINGS, photos(tmp_path / "in", ["a"]), files_of, resume=False, overwrite=False).work
        with pytest.raises(StoreError, match="not a plain folder"):
            commit(store, work, (4, 3))
    finally:
        store.close()
    assert not list((tmp_path / "elsewhere").iterdir())
