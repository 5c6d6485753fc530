"""What `normgrad explain` writes and how: --no-overlay, --no-npy, --map-dtype, background writers, the one-pass batch."""

import json
import os
import threading
import time

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from normgrad.cli import main
from normgrad.run.writers import Writer
from test_output_contract import picture


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random ResNet-18 weights in a file: every run of a test explains with the same model."""
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    for i, size in enumerate([(48, 40), (40, 48), (48, 40)]):
        picture(folder / f"img{i}.png", size=size, seed=i)
    return folder


@pytest.fixture
def explain(capsys, weights):
    def run(*argv):
        code = main(["explain", *map(str, argv), "--model", "torchvision:resnet18", "--weights", str(weights), "--workers", "0",
                     "--batch-size", "2"])  # fmt: skip
        return code, *capsys.readouterr()

    return run


def files(out):
    """The outputs and the manifest (not the journal, not the gallery)."""
    return {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and not {".normgrad", "gallery"} & set(p.relative_to(out).parts) and p.name != "index.html"
    }


def gallery_pictures(out):
    return sorted(p.name for p in (out / "gallery").rglob("*.jpg"))


def records(out):
    return json.loads((out / "summary.json").read_text())["images"]


def test_no_overlay_and_no_npy_write_only_the_rest_and_resume(photos, tmp_path, explain):
    for flag, kept in (("--no-overlay", "npy"), ("--no-npy", "png")):
        out = tmp_path / flag
        code, stdout, err = explain(photos, "--out", out, "--method", "selective", flag)
        assert code == 0, err
        assert files(out) == {f"img{i}.{kept}" for i in range(3)} | {"summary.json"}
        assert all(set(r["outputs"][0]) == {"layer", kept, f"{kept}_bytes"} for r in records(out))
        assert f"img0.{kept}" in stdout
        pictures = gallery_pictures(out)  # the gallery is made from the maps in memory: complete without either file
        assert len([p for p in pictures if p.endswith(".t.jpg")]) == 3 and len([p for p in pictures if ".m0." in p]) == 3
        page = "".join(p.read_text() for p in (out / "gallery").rglob("chunk-*.js"))
        skipped = "png" if kept == "npy" else "npy"
        assert f'"{kept}":"img0.{kept}"' in page and f'"{skipped}":null' in page  # the page links only what was written
        code, stdout, err = explain(photos, "--out", out, "--method", "selective", flag, "--resume")
        assert code == 0 and "3 of them done earlier" in stdout, err
        code, _, err = explain(photos, "--out", out, "--method", "selective", "--resume")  # other outputs: other settings
        assert code == 2 and "other settings" in err


def test_float16_maps_are_the_float32_maps_rounded(photos, tmp_path, explain):
    for dtype in ("float32", "float16"):
        code, _, err = explain(photos, "--out", tmp_path / dtype, "--method", "selective", "--map-dtype", dtype)
        assert code == 0, err
    for i in range(3):
        full, half = np.load(tmp_path / "float32" / f"img{i}.npy"), np.load(tmp_path / "float16" / f"img{i}.npy")
        assert half.dtype == np.float16 and np.array_equal(half, full.astype(np.float16))
        assert (tmp_path / "float16" / f"img{i}.png").read_bytes() == (tmp_path / "float32" / f"img{i}.png").read_bytes()
    assert json.loads((tmp_path / "float16" / "summary.json").read_text())["settings"]["map_dtype"] == "float16"
    assert "map_dtype" not in json.loads((tmp_path / "float32" / "summary.json").read_text())["settings"]  # earlier records match


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--no-overlay", "--no-npy"], "nothing to write"),
        (["--no-npy", "--map-dtype", "float16"], "--no-npy writes none"),
        (["--map-dtype", "float16", "--combine", "none"], "raw maps"),
        (["--map-dtype", "float16", "--save-layers"], "layer maps of --save-layers are raw"),
    ],
)
def test_output_options_that_make_no_sense_are_errors(photos, tmp_path, explain, flags, message):
    code, _, err = explain(photos, "--out", tmp_path / "o", *flags)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method", ["selective", "gradient", "center"])
def test_background_writers_write_the_same_files(photos, tmp_path, explain, method):
    """0, 1 and 3 writer threads: the same bytes in every file and the same records."""
    for writers in (0, 1, 3):
        code, _, err = explain(photos, "--out", tmp_path / str(writers), "--method", method, "--writers", writers)
        assert code == 0, err
    for writers in (1, 3):
        assert files(tmp_path / str(writers)) == files(tmp_path / "0")
        for name in files(tmp_path / "0") - {"summary.json"}:
            assert (tmp_path / str(writers) / name).read_bytes() == (tmp_path / "0" / name).read_bytes(), name
        strip = lambda rs: [{k: v for k, v in r.items() if k not in ("run", "input")} for r in rs]  # noqa: E731
        assert strip(records(tmp_path / str(writers))) == strip(records(tmp_path / "0"))


def test_writer_hands_back_results_in_order_and_bounds_the_queue():
    running, most = [0], [0]
    lock = threading.Lock()

    def task(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01 * (i % 3))
        with lock:
            running[0] -= 1
        if i == 7:
            raise ValueError("seven")
        return i

    writer = Writer(3, limit=4)
    done = []
    try:
        for i in range(12):
            done += writer.submit(task, i)
            assert len(writer._pending) <= 4
        done += writer.drain()
    finally:
        writer.close()
    assert [f.exception() is not None for f in done].index(True) == 7 and str(done[7].exception()) == "seven"
    assert [f.result() for k, f in enumerate(done) if k != 7] == [k for k in range(12) if k != 7]
    assert most[0] <= 3
    inline = Writer(0, limit=4)
    (future,) = inline.submit(task, 1)
    assert future.result() == 1


def test_overlay_png_is_the_photo_blended_with_the_map(photos, tmp_path, explain):
    """The fast PNG encoding is lossless: the decoded overlay equals viz.overlay of the photo and the saved map."""
    from normgrad import viz

    code, _, err = explain(photos / "img1.png", "--out", tmp_path, "--method", "selective")
    assert code == 0, err
    photo = Image.open(photos / "img1.png").convert("RGB")
    expected = np.asarray(viz.overlay(photo, np.load(tmp_path / "img1.npy")))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "img1.png")), expected)


def test_jpeg_overlays_hold_the_same_maps_and_a_close_picture(photos, tmp_path, explain):
    """--overlay-format jpg: .jpg overlays (a lossy copy of the PNG's pixels), the very same .npy maps, linked by the gallery."""
    for kind in ("png", "jpg"):
        code, stdout, err = explain(photos, "--out", tmp_path / kind, "--method", "selective", "--overlay-format", kind)
        assert code == 0, err
    out = tmp_path / "jpg"
    assert files(out) == {f"img{i}.{k}" for i in range(3) for k in ("jpg", "npy")} | {"summary.json"}
    assert "img0.jpg" in stdout and "JPG overlays" in stdout
    for i in range(3):
        assert np.array_equal(np.load(out / f"img{i}.npy"), np.load(tmp_path / "png" / f"img{i}.npy"))
        exact = np.asarray(Image.open(tmp_path / "png" / f"img{i}.png"), dtype=np.float32)
        lossy = Image.open(out / f"img{i}.jpg")
        error = np.abs(np.asarray(lossy, dtype=np.float32) - exact).mean()  # random-noise photos: the worst case for JPEG
        assert lossy.format == "JPEG" and lossy.size == (exact.shape[1], exact.shape[0]) and error < 12
    record = records(out)[0]["outputs"][0]
    assert set(record) == {"layer", "jpg", "jpg_bytes", "npy", "npy_bytes"} and record["jpg_bytes"] == (out / "img0.jpg").stat().st_size
    assert json.loads((out / "summary.json").read_text())["settings"]["overlay_format"] == "jpg"
    page = "".join(p.read_text() for p in (out / "gallery").rglob("chunk-*.js"))
    assert '"png":"img0.jpg"' in page  # the gallery's link to the overlay


def test_resume_with_another_overlay_format_is_another_run(photos, tmp_path, explain):
    code, _, err = explain(photos, "--out", tmp_path, "--method", "selective", "--overlay-format", "jpg")
    assert code == 0, err
    code, stdout, err = explain(photos, "--out", tmp_path, "--method", "selective", "--overlay-format", "jpg", "--resume")
    assert code == 0 and "3 of them done earlier" in stdout, err
    code, _, err = explain(photos, "--out", tmp_path, "--method", "selective", "--resume")
    assert code == 2 and "other settings" in err


def test_overlay_format_without_overlays_is_an_error(photos, tmp_path, explain):
    code, _, err = explain(photos, "--out", tmp_path / "o", "--no-overlay", "--overlay-format", "jpg")
    assert code == 2 and "--no-overlay writes none" in err and err.count("\n") == 1


def test_background_threads_follow_the_device(monkeypatch):
    """Two readers and writers next to a CPU model (none on two cores); on CUDA three quarters of the cores, shared by
    torchrun's local processes."""
    from normgrad.run.options import background_threads

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert background_threads("cpu") == 0  # two cores: the model's threads need both
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert background_threads("cpu") == 2 and background_threads("cuda") == 12 and background_threads("cuda:1") == 12
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert background_threads("cuda") == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert background_threads("cuda") == 2


def test_a_constant_map_is_written_with_a_warning(photos, tmp_path, capsys):
    """A head of zeros: every gradient is zero, so every map is; explain writes it as computed and says it points nowhere."""
    model = torchvision.models.resnet18()
    torch.nn.init.zeros_(model.fc.weight)
    path = tmp_path / "flat.pth"
    torch.save(model.state_dict(), path)
    argv = ["explain", str(photos), "--out", str(tmp_path / "o"), "--model", "torchvision:resnet18", "--weights", str(path)]
    assert main([*argv, "--method", "normgrad", "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("map is constant (0 everywhere)") == 3 and "img0.png: the combined map" in err
    assert not np.load(tmp_path / "o" / "img0.npy").any()


def test_resume_notices_weights_replaced_by_a_file_of_the_same_size_and_mtime(photos, tmp_path, explain, weights):
    out = tmp_path / "out"
    code, _, err = explain(photos, "--out", out, "--method", "selective", "--no-overlay")
    assert code == 0, err
    original, info = weights.read_bytes(), os.stat(weights)
    try:
        torch.manual_seed(1)
        torch.save(torchvision.models.resnet18().state_dict(), weights)  # another model, same size
        os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns))
        assert os.stat(weights).st_size == info.st_size and os.stat(weights).st_mtime_ns == info.st_mtime_ns
        code, _, err = explain(photos, "--out", out, "--method", "selective", "--no-overlay", "--resume")
        assert code == 2 and "other settings" in err
    finally:
        weights.write_bytes(original)  # the module's other tests explain with the first model


def test_maps_in_shards_equal_the_npy_files_and_resume(photos, tmp_path, explain):
    import normgrad as ng

    half = ["--method", "selective", "--map-dtype", "float16"]
    code, _, err = explain(photos, "--out", tmp_path / "files", *half)
    assert code == 0, err
    code, stdout, err = explain(photos, "--out", tmp_path / "shards", *half, "--storage", "shards")
    assert code == 0, err
    assert "float16 maps in shards/" in stdout
    assert files(tmp_path / "shards") == {f"img{i}.png" for i in range(3)} | {"summary.json"} | {
        p.relative_to(tmp_path / "shards").as_posix() for p in (tmp_path / "shards" / "shards").iterdir()
    }
    assert len(list((tmp_path / "shards" / "shards").iterdir())) == 1
    as_files, in_shards = ng.open_run(tmp_path / "files"), ng.open_run(tmp_path / "shards")
    assert as_files.names == in_shards.names == [f"img{i}" for i in range(3)] and in_shards.storage == "shards"
    assert as_files.predictions == in_shards.predictions
    for name in as_files.names:
        assert in_shards.map(name).dtype == np.float16 and np.array_equal(as_files.map(name), in_shards.map(name))
        assert np.array_equal(in_shards.map(name), np.load(tmp_path / "files" / f"{name}.npy"))
    code, stdout, err = explain(photos, "--out", tmp_path / "shards", *half, "--storage", "shards", "--resume")
    assert code == 0 and "3 of them done earlier" in stdout, err
    removed = list((tmp_path / "shards" / "gallery").rglob("*.m0.*"))
    for path in removed:
        path.unlink()  # the gallery's map pictures, made again from the maps in the shard
    assert len(removed) == 3
    assert main(["gallery", str(tmp_path / "shards")]) == 0
    assert len([p for p in gallery_pictures(tmp_path / "shards") if ".m0." in p]) == 3
    code, _, err = explain(photos, "--out", tmp_path / "shards", *half, "--resume")
    assert code == 2 and "other settings" in err  # the maps are in shards: a resume into files is another run's settings
    code, _, err = explain(photos, "--out", tmp_path / "none", "--storage", "shards", "--no-npy")
    assert code == 2 and "--no-npy writes none" in err and err.count("\n") == 1
