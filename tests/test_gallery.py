"""The gallery an explain run writes: files through the store, escaping, incremental updates, resume, ownership, --save-layers."""

import io
import json
import os
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from normgrad.cli import main
from normgrad.gallery import Gallery
from normgrad.gallery.page import CHUNK, as_json
from normgrad.store import OutputStore, output_names
from web import picture

MODEL = ["--model", "torchvision:resnet18", "--weights", "none", "--workers", "0"]
FAST = [*MODEL, "--method", "center"]
# every name below is a file name: no "/" inside one, so the closing script tag spans a folder
NAMES = ['<b>bold</b> & "q".png', "x<", "café ☃ 猫.jpg", "it's <img src=x onerror=1>.png", "100% #1?.png"]


def awkward_inputs(folder: Path) -> list[Path]:
    paths = [picture(folder / NAMES[0]), picture(folder / "x<" / "script>é.jpg", seed=1)]
    paths += [picture(folder / name, seed=k) for k, name in enumerate(NAMES[2:], start=2)]
    (folder / "broken.jpg").write_bytes(b"not an image")
    return [*paths, folder / "broken.jpg"]


def chunks(out: Path) -> list[dict]:
    """Every item of the gallery's data scripts, parsed back (they are ASCII JSON inside a function call)."""
    items = []
    for path in sorted((out / "gallery" / "data").glob("chunk-*.js")):
        text = path.read_bytes().decode("ascii")
        assert text.startswith("normgradGallery.chunk(") and text.endswith(");\n")
        assert "<" not in text and ">" not in text and "&" not in text  # escaped: no name can end the script
        items += json.loads(text[text.index(",") + 1 : -3])
    return items


def index(out: Path) -> dict:
    text = (out / "gallery" / "data" / "index.js").read_text()
    return json.loads(text[len("normgradGallery.index(") : -3])


def run(*argv) -> int:
    return main(["explain", *map(str, argv)])


def test_reserved_names_never_become_outputs():
    """index.html, gallery/, summary.json and .normgrad/ (any case) are never an output or a folder above one."""
    inputs = [("d/gallery/a.jpg", "d"), ("d/Index.HTML/b.jpg", "d"), ("d/summary.json/c.jpg", "d"), ("d/GALLERY.png", "d"),
              ("d/_gallery/a.jpg", "d")]  # fmt: skip
    names = output_names(inputs, lambda name: [f"{name}.png", f"{name}.npy"])
    assert names == ["_gallery/a.jpg", "_Index.HTML/b.jpg", "_summary.json/c.jpg", "GALLERY", "_gallery/a"]


def test_explain_writes_a_gallery_with_every_image_and_escaped_names(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(*awkward_inputs(tmp_path / "in"), "--out", out, *FAST) == 1  # the broken file is skipped
    assert "gallery: " in capsys.readouterr().out
    page = (out / "index.html").read_text()
    assert '<script src="gallery/gallery.js"></script>' in page and "http" not in page  # offline: no CDN
    assert not any(name.split(".")[0] in page for name in NAMES)  # the page holds no user data
    items = {item["name"]: item for item in chunks(out)}
    manifest = json.loads((out / "summary.json").read_text())
    assert manifest["gallery"] == {"index": "index.html", "folder": "gallery"}
    assert set(items) == {e["name"] for e in manifest["images"]} | {e["name"] for e in manifest["failed"]}
    assert items["broken"]["status"] == "failed" and "cannot read image" in items["broken"]["error"]
    assert items["x</script>é"]["file"] == "script>é.jpg"
    assert not index(out)["running"] and len(index(out)["chunks"]) == 1
    for entry in manifest["images"]:
        shown = items[entry["name"]]
        assert shown["status"] == "ok" and shown["predictions"] == entry["predictions"] and shown["method"] == "center"
        thumb = Image.open(out / shown["thumb"])
        assert max(thumb.size) <= 256 and thumb.format == "JPEG" and list(thumb.size) == shown["thumb_size"]
        photo, colours = Image.open(out / shown["photo"]), Image.open(out / shown["maps"][0]["view"])
        assert photo.size == colours.size == tuple(entry["size"])  # small pictures are never upscaled
        for kind in ("png", "npy"):  # the links are percent-encoded relative URLs of the real outputs
            link = shown["maps"][0][kind]
            assert "#" not in link and "?" not in link and ":" not in link and unquote(link) == entry["outputs"][0][kind]


def test_gallery_colours_are_the_overlay_colours(tmp_path):
    """The full view blends the map's colours over the photo: at opacity 0.5 that is viz.overlay (JPEG aside)."""
    import normgrad as ng

    out = tmp_path / "out"
    assert run(picture(tmp_path / "a.png", (120, 90)), "--out", out, *MODEL, "--layers", "layer2,layer3") == 0
    (shown,) = chunks(out)
    plane = np.load(out / "a.npy")
    photo = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"), dtype=np.float32)
    colours = np.asarray(Image.open(out / shown["maps"][0]["view"]), dtype=np.float32)
    blended = 0.5 * photo + 0.5 * colours
    expected = np.asarray(ng.viz.overlay(Image.open(tmp_path / "a.png"), plane), dtype=np.float32)
    assert np.abs(blended - expected).mean() < 3  # JPEG at quality 85


def test_updates_as_results_arrive_cost_the_open_chunk_only(tmp_path, monkeypatch):
    """flush() rewrites the open chunk and index.js: at most CHUNK items, whatever the total; finish() compacts."""
    store = OutputStore(tmp_path / "out", "run1")
    gallery = Gallery(store, chunk=8)
    gallery.start(None)
    written: list[tuple[str, int]] = []
    real_write = store.write
    monkeypatch.setattr(
        store,
        "write",
        lambda relative, data, replace=False: written.append((relative, len(data))) or real_write(relative, data, replace=replace),
    )
    sizes = []
    for batch in range(12):  # 12 batches of 3: 36 items, 5 chunks
        written.clear()
        for k in range(3):
            gallery.fail({"type": "failed", "run": "run1", "name": f"img{batch:02d}-{k}", "image": f"/in/img{batch}-{k}.jpg", "error": "x"})
        gallery.flush()
        assert {r for r, _ in written} <= {"gallery/data/index.js", *(f"gallery/data/chunk-{c:06d}.js" for c in range(5))}
        assert len(written) <= 3  # the open chunk (two when it just filled up) and the index
        sizes.append(max(n for r, n in written if "chunk" in r))
    assert max(sizes) < 1.05 * sizes[2]  # a full chunk is the most ever rewritten: flat, not growing with the total
    assert len(chunks(tmp_path / "out")) == 36 and index(tmp_path / "out")["running"]
    gallery.finish({"format": "normgrad-explain", "version": 1, "runs": {}, "images": [], "failed": [], "interrupted": []})
    assert chunks(tmp_path / "out") == [] and not index(tmp_path / "out")["running"]
    assert not list((tmp_path / "out" / "gallery" / "data").glob("chunk-*"))  # stale chunks removed
    store.close()
    assert CHUNK >= 100


def test_json_in_the_scripts_is_ascii_and_closes_nothing():
    text = as_json({"name": "</script><!-- \u2028 é 猫 & ' \""})
    assert text.isascii() and "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"name": "</script><!-- \u2028 é 猫 & ' \""}


def test_resume_and_normgrad_gallery_repair_missing_pictures(tmp_path, capsys):
    images = tmp_path / "in"
    paths = [picture(images / f"{n}.png", seed=k) for k, n in enumerate("abc")]
    out = tmp_path / "out"
    assert run(*paths[:2], "--out", out, *FAST) == 0
    first = {i["name"]: i for i in chunks(out)}
    (out / first["a"]["thumb"]).unlink()  # e.g. a run killed between an image and its pictures
    assert run(*paths, "--out", out, *FAST, "--resume") == 0
    again = {i["name"]: i for i in chunks(out)}
    assert set(again) == {"a", "b", "c"} and (out / again["a"]["thumb"]).is_file() and (out / again["c"]["thumb"]).is_file()

    paths[1].unlink()  # an input gone: the gallery command shows its overlay instead of the photo
    for picture_file in (out / "gallery" / "img").rglob("*"):
        if picture_file.is_file():
            picture_file.unlink()
    capsys.readouterr()
    assert main(["gallery", str(out)]) == 0
    assert "3 image(s) given new pictures" in capsys.readouterr().out
    rebuilt = {i["name"]: i for i in chunks(out)}
    assert rebuilt["b"]["original"] is False and rebuilt["b"]["photo"].endswith(".o.jpg") and (out / rebuilt["b"]["photo"]).is_file()
    assert rebuilt["a"]["original"] is True and (out / rebuilt["a"]["photo"]).is_file()
    assert main(["gallery", str(tmp_path / "nothing")]) == 2
    assert "not an output folder" in capsys.readouterr().err


def test_an_index_html_normgrad_did_not_write_is_never_replaced(tmp_path, capsys):
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("my own page")
    image = picture(tmp_path / "a.png")
    assert run(image, "--out", out, *FAST) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "index.html exists and normgrad did not write it" in err and "--no-gallery" in err
    assert run(image, "--out", out, *FAST, "--no-gallery") == 0
    assert (out / "index.html").read_text() == "my own page" and not (out / "gallery").exists()
    assert "gallery" not in json.loads((out / "summary.json").read_text())
    assert main(["gallery", str(out)]) == 2 and "did not write it" in capsys.readouterr().err
    assert run(image, "--out", out, *FAST, "--overwrite") == 0  # --overwrite: the page is replaced (as a file, not through a link)
    assert "gallery/gallery.js" in (out / "index.html").read_text()


def test_gallery_files_are_never_explained_again(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(picture(tmp_path / "a.png"), "--out", out, *FAST) == 0
    thumb = next((out / "gallery" / "img").rglob("*.t.jpg"))
    assert run(thumb, tmp_path / "a.png", "--out", out, *FAST, "--resume") == 1
    assert "never explained again" in capsys.readouterr().err


def test_save_layers_writes_and_records_each_layer(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(picture(tmp_path / "a.png"), "--out", out, *MODEL, "--layers", "layer2,layer3", "--save-layers") == 0
    (entry,) = json.loads((out / "summary.json").read_text())["images"]
    assert [o["layer"] for o in entry["outputs"]] == ["combined", "layer2", "layer3"]
    assert [o["npy"] for o in entry["outputs"]] == ["a.npy", "a_layer2.npy", "a_layer3.npy"]
    for o in entry["outputs"]:
        assert np.load(out / o["npy"]).shape == (72, 96) and os.path.getsize(out / o["png"]) == o["png_bytes"]
    (shown,) = chunks(out)
    assert [m["layer"] for m in shown["maps"]] == ["combined", "layer2", "layer3"]
    assert all(Image.open(out / m["view"]).size == (96, 72) for m in shown["maps"])
    capsys.readouterr()
    assert run(picture(tmp_path / "b.png"), "--out", tmp_path / "o2", *MODEL, "--method", "gradient", "--save-layers") == 2
    assert "--save-layers does not apply to gradient" in capsys.readouterr().err
    assert run(picture(tmp_path / "b.png"), "--out", tmp_path / "o2", *MODEL, "--combine", "none", "--save-layers") == 2
    assert "every layer's map is written already" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["plain.png", "with space.png"])
def test_pictures_read_back(tmp_path, name):
    out = tmp_path / "out"
    assert run(picture(tmp_path / name, (700, 300)), "--out", out, *FAST) == 0
    (shown,) = chunks(out)
    assert Image.open(io.BytesIO((out / shown["photo"]).read_bytes())).size == (700, 300)
    assert Image.open(out / shown["thumb"]).size == (256, 110)
