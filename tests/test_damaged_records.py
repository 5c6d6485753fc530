"""Records damaged on disk: a manifest of the wrong shape stops with one line naming the file and the field (exit 2);
a journal line of the wrong shape is skipped like a torn one (its image is redone)."""

import json

import pytest

from normgrad.cli import main
from normgrad.store import OutputStore, StoreError, identity
from test_output_contract import FAST, one_line, picture


def two_files(name):
    return [f"{name}.png", f"{name}.npy"]


def plan(store, paths, **flags):
    return store.begin({"method": "normgrad"}, [(str(p), str(p.parent)) for p in paths], two_files, resume=False, overwrite=False, **flags)


def record(store, work):
    """The record of a finished image, its files written."""
    sizes = {f: store.write(f, f.encode(), replace=True) for f in work.files}
    outputs = [{"layer": "combined", "png": work.files[0], "npy": work.files[1], "png_bytes": sizes[work.files[0]],
                "npy_bytes": sizes[work.files[1]]}]  # fmt: skip
    return {"type": "image", "run": store.run, "name": work.name, "image": work.path, "input": identity(work.path), "size": [4, 3],
            "layers": ["layer4"], "outputs": outputs, "predictions": [{"class": 1, "name": "one", "probability": 0.5}],
            "target": {"class": 1, "name": "one", "probability": 0.5}}  # fmt: skip


def finished_folder(tmp_path):
    """An output folder of one finished run over two inputs, ``a`` and ``b``."""
    out = tmp_path / "out"
    for name in "ab":
        picture(tmp_path / "in" / f"{name}.png")
    store = OutputStore(out, "run1")
    try:
        for work in plan(store, [tmp_path / "in" / "a.png", tmp_path / "in" / "b.png"]).work:
            store.save(work, {}, record(store, work))
        store.journal.close()
        store.finish(1)
    finally:
        store.close()
    return out


def entry(manifest):
    return manifest["images"][0]


DAMAGED_MANIFESTS = [
    ("an entry without name", lambda m: entry(m).pop("name"), "images[0].name"),
    ("a name that is a number", lambda m: entry(m).update(name=7), "images[0].name"),
    ("a name leaving the folder", lambda m: entry(m).update(name="../../x"), "images[0].name"),
    ("version as a string", lambda m: m.update(version="1"), "version"),
    ("version as a boolean", lambda m: m.update(version=True), "version"),
    ("version zero", lambda m: m.update(version=0), "version"),
    ("version missing", lambda m: m.pop("version"), "version"),
    ("runs as a list", lambda m: m.update(runs=["run1"]), "runs"),
    ("a run as a string", lambda m: m["runs"].update(run1="yesterday"), "runs.run1"),
    ("a run's settings as a list", lambda m: m["runs"]["run1"].update(settings=[]), "runs.run1.settings"),
    ("a run's world as a string", lambda m: m["runs"]["run1"].update(world="1"), "runs.run1.world"),
    ("outputs as a string", lambda m: entry(m).update(outputs="a.png"), "images[0].outputs"),
    ("outputs as null", lambda m: entry(m).update(outputs=None), "images[0].outputs"),
    ("an output as a list", lambda m: entry(m).update(outputs=[["a.png"]]), "images[0].outputs[0]"),
    ("an output file as a number", lambda m: entry(m)["outputs"][0].update(png=3), "images[0].outputs[0].png"),
    ("an output file outside the folder", lambda m: entry(m)["outputs"][0].update(npy="/etc/passwd"), "images[0].outputs[0].npy"),
    ("byte size as a string", lambda m: entry(m)["outputs"][0].update(png_bytes="12"), "images[0].outputs[0].png_bytes"),
    ("files as a string", lambda m: entry(m).update(files="a.png"), "images[0].files"),
    ("a claimed file above the folder", lambda m: entry(m).update(files=["../a.png"]), "images[0].files[0]"),
    ("input as a list", lambda m: entry(m).update(input=["a.png"]), "images[0].input"),
    ("input bytes as a string", lambda m: entry(m)["input"].update(bytes="10"), "images[0].input.bytes"),
    ("images as an object", lambda m: m.update(images={"a": {}}), "images"),
    ("failed as a string", lambda m: m.update(failed="none"), "failed"),
    ("an interrupted entry as a number", lambda m: m.update(interrupted=[5]), "interrupted[0]"),
    ("size as a string", lambda m: entry(m).update(size="4x3"), "images[0].size"),
    ("size with one number", lambda m: entry(m).update(size=[4]), "images[0].size"),
    ("layers as a string", lambda m: entry(m).update(layers="layer4"), "images[0].layers"),
    ("predictions as an object", lambda m: entry(m).update(predictions={"one": 0.5}), "images[0].predictions"),
    ("a probability as a string", lambda m: entry(m)["predictions"][0].update(probability="50%"), "images[0].predictions[0].probability"),
    ("target as a list", lambda m: entry(m).update(target=[1]), "images[0].target"),
    ("the gallery claim as a string", lambda m: m.update(gallery="yes"), "gallery"),
    ("the gallery claiming other files", lambda m: m.update(gallery={"index": "../x.html", "folder": "gallery"}), "gallery"),
    ("the current run as a list", lambda m: m.update(run=["run1"]), "run"),
    ("settings as a list", lambda m: m.update(settings=[]), "settings"),
]


def damage(out, mutate):
    manifest = json.loads((out / "summary.json").read_text())
    mutate(manifest)
    (out / "summary.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("case, mutate, field", DAMAGED_MANIFESTS, ids=[c[0] for c in DAMAGED_MANIFESTS])
def test_a_damaged_manifest_is_named_with_its_field(tmp_path, case, mutate, field):
    out = finished_folder(tmp_path)
    damage(out, mutate)
    store = OutputStore(out, "run2")
    try:
        with pytest.raises(StoreError) as error:
            store.begin({"method": "normgrad"}, [], two_files, resume=True, overwrite=False)
    finally:
        store.close()
    message = str(error.value)
    assert str(out / "summary.json") in message and f"{field} must be" in message and "\n" not in message


@pytest.mark.parametrize("case, mutate, field", DAMAGED_MANIFESTS[::4], ids=[c[0] for c in DAMAGED_MANIFESTS[::4]])
def test_the_cli_stops_on_a_damaged_manifest_with_one_line_and_exit_2(tmp_path, capsys, case, mutate, field):
    out = finished_folder(tmp_path)
    damage(out, mutate)
    assert main(["gallery", str(out)]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "summary.json" in err and field in err


def test_explain_resume_stops_on_a_damaged_manifest_with_exit_2(tmp_path, capsys):
    out = finished_folder(tmp_path)
    damage(out, lambda m: entry(m).update(outputs="a.png"))
    assert main(["explain", str(tmp_path / "in"), "--out", str(out), "--resume", *FAST]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "images[0].outputs must be a list" in err


def test_a_damaged_manifest_is_started_afresh_with_overwrite(tmp_path):
    out = finished_folder(tmp_path)
    damage(out, lambda m: m.update(runs=[]))
    store = OutputStore(out, "run2")
    try:
        again = store.begin({"method": "normgrad"}, [(str(tmp_path / "in" / "a.png"), str(tmp_path / "in"))], two_files,
                            resume=False, overwrite=True)  # fmt: skip
    finally:
        store.close()
    assert [w.name for w in again.work] == ["a"]


DAMAGED_LINES = [
    ("a record without name", lambda r: r.pop("name")),
    ("a name that is a list", lambda r: r.update(name=["a"])),
    ("outputs as a string", lambda r: r.update(outputs="a.png")),
    ("an output file leaving the folder", lambda r: r["outputs"][0].update(png="../../a.png")),
    ("a byte size as a float", lambda r: r["outputs"][0].update(npy_bytes=1.5)),
    ("input as a string", lambda r: r.update(input="a.png")),
    ("the run as a number", lambda r: r.update(run=1)),
    ("an unknown type", lambda r: r.update(type="picture")),
    ("size as an object", lambda r: r.update(size={"w": 4})),
    ("predictions as a string", lambda r: r.update(predictions="one")),
    ("not an object", lambda r: r.clear() or r.update(list=True)),  # replaced by a list below
]


@pytest.mark.parametrize("case, mutate", DAMAGED_LINES, ids=[c[0] for c in DAMAGED_LINES])
def test_a_damaged_journal_line_is_skipped_like_a_torn_one(tmp_path, case, mutate):
    """A killed run's journal: ``a``'s record is damaged, ``b``'s is fine: resume redoes ``a`` and keeps ``b``."""
    photos = [picture(tmp_path / "in" / f"{name}.png") for name in "ab"]
    out = tmp_path / "out"
    store = OutputStore(out, "run1")
    try:
        a, b = plan(store, photos).work
        store.save(b, {}, record(store, b))
        store.journal.append({"type": "claim", "run": "run1", "name": "a", "image": a.path, "files": a.files})
        damaged = record(store, a)
        mutate(damaged)
        store.journal.append([damaged] if damaged == {"list": True} else damaged)
    finally:
        store.close()  # killed: no merge
    store = OutputStore(out, "run2")
    try:
        state = store.current_state()
        assert state.entries["a"]["status"] == "interrupted" and state.entries["b"]["status"] == "ok"
        resumed = store.begin({"method": "normgrad"}, [(str(p), str(p.parent)) for p in photos], two_files, resume=True, overwrite=False)
    finally:
        store.close()
    assert [w.name for w in resumed.work] == ["a"] and resumed.done == ["b"]
    assert set(resumed.work[0].replace) == {"a.png", "a.npy"}  # the files it claimed stay normgrad's
