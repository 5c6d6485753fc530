"""The normgrad command, as a user runs it."""

import json

import numpy as np
import pytest
import skimage.data
from PIL import Image

from normgrad.cli import main


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.chelsea()).save(folder / "cat.jpg")
    Image.fromarray(skimage.data.coffee()[::2, ::2]).save(folder / "cup.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_writes_maps_at_the_original_size(photos, tmp_path, capsys):
    code, out, err = run(capsys, "explain", photos / "cat.jpg", photos / "cup.png", "--out", tmp_path, "--top-k", "3")
    assert code == 0, err
    cat = np.load(tmp_path / "cat.npy")
    assert cat.shape == (300, 451) and cat.dtype == np.float32
    assert Image.open(tmp_path / "cat.png").size == (451, 300)
    assert np.load(tmp_path / "cup.npy").shape == (200, 300)
    row, col = np.unravel_index(cat.argmax(), cat.shape)
    assert 60 < row < 280 and 100 < col < 380  # on the cat's face
    summary = json.loads((tmp_path / "summary.json").read_text())
    first = summary["images"][0]
    assert summary["model"] == "efficientnet_lite0" and summary["method"] == "default"
    assert summary["layers"] == ["blocks.4", "blocks.6", "bn2"] and summary["default"].startswith("blocks.4: selective")
    assert len(first["predictions"]) == 3 and 281 <= first["predictions"][0]["class"] <= 287
    assert first["target"]["class"] == first["predictions"][0]["class"]
    assert "cat.jpg" in out and "Egyptian cat" in out


def test_bad_images_are_skipped_with_one_line_each(photos, tmp_path, capsys):
    code, out, err = run(capsys, "explain", photos / "broken.jpg", photos / "cup.png", tmp_path / "missing.png", "--out", tmp_path)
    assert code == 1
    assert err.count("\n") == 2 and "broken.jpg" in err and "missing.png" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["failed"]) == 2 and [r["image"] for r in summary["images"]] == [str(photos / "cup.png")]
    assert summary["images"][0]["outputs"][0]["npy"] == f"{photos.name}/cup.npy"  # below the inputs' common folder
    assert (tmp_path / photos.name / "cup.npy").exists()


def test_outputs_are_not_overwritten_silently(photos, tmp_path, capsys):
    assert run(capsys, "explain", photos / "cup.png", "--out", tmp_path)[0] == 0
    code, _, err = run(capsys, "explain", photos / "cup.png", "--out", tmp_path)
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1
    assert run(capsys, "explain", photos / "cup.png", "--out", tmp_path, "--overwrite")[0] == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--layers", "blocks.9"], "unknown layer 'blocks.9'; closest names"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--target", "unicorn"], "unknown class name 'unicorn'"),
        (["--target", "1000"], "out of range"),
        (["--combine", "mean"], "invalid choice"),
        (["--method", "meta:meta"], "inner steps do not nest"),
        (["--method", "adversarial:meta"], "inner steps do not nest"),
        (["--method", "meta", "--lr", "1e308"], "argument --lr: must be at most 3.403e+38"),
        (["--method", "meta", "--steps", "1000000"], "argument --steps: must be at most 100"),
        (["--device", "cuda"] if not __import__("torch").cuda.is_available() else ["--model", "x"], "error"),
    ],
)
def test_errors_are_one_line_without_traceback(photos, tmp_path, capsys, argv, message):
    parser_error = "invalid choice" in message or "argument --" in message
    with pytest.raises(SystemExit) if parser_error else _nothing():
        code, _, err = run(capsys, "explain", photos / "cup.png", "--out", tmp_path, *argv)
        assert code != 0
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    if parser_error:
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_methods_layers_and_per_layer_outputs(photos, tmp_path, capsys):
    code, _, err = run(
        capsys, "explain", photos / "cup.png", "--out", tmp_path, "--method", "conv3x3+max", "--layers", "blocks.2,bn2", "--combine", "none"
    )
    assert code == 0, err
    assert {p.name for p in tmp_path.glob("*.npy")} == {"cup_blocks.2.npy", "cup_bn2.npy"}
    code, _, err = run(
        capsys,
        "explain",
        photos / "cup.png",
        "--out",
        tmp_path / "meta",
        "--method",
        "meta:selective",
        "--lr",
        "0.001",
        "--target",
        "espresso",
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "meta" / "summary.json").read_text())
    assert summary["lr"] == 0.001 and summary["images"][0]["target"]["name"] == "espresso"
    code, _, err = run(capsys, "explain", photos / "cup.png", "--out", tmp_path / "grad", "--method", "gradient")
    assert code == 0, err and np.load(tmp_path / "grad" / "cup.npy").shape == (200, 300)


def test_compare_and_layers(photos, tmp_path, capsys):
    figure = tmp_path / "fig.png"
    code, out, err = run(
        capsys, "compare", photos / "cup.png", "--methods", "normgrad,gradcam,gradient", "--layers", "blocks.4,bn2", "--out", figure
    )
    assert code == 0, err and figure.stat().st_size > 10_000
    code, _, err = run(capsys, "compare", photos / "cup.png", "--out", figure)
    assert code == 2 and "already exists" in err
    code, out, _ = run(capsys, "layers", "torchvision:resnet18", "--weights", "none", "--size", "64")
    assert code == 0 and "*  layer2 " in out and "1x128x8x8" in out and "(N, C, H, W) 8×8" in out
    code, out, _ = run(capsys, "layers", "torchvision:resnet18", "--weights", "none")  # at the model's size: explain's layers too
    assert code == 0 and "*e layer4 " in out and " e layer4.0 " in out and "e = the layers of `normgrad explain`'s default" in out


def test_help_has_examples(capsys):
    for command in ["explain", "compare", "layers", "demo"]:
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0 and "examples:" in capsys.readouterr().out


def test_eval_grid_needs_four_confident_classes(photos, capsys):
    code, _, err = run(capsys, "eval", "grid", photos / "cat.jpg", photos / "cup.png")
    assert code == 2 and "at least 4 different classes" in err and err.count("\n") == 1


@pytest.mark.parametrize("predict_at, where", [("model", "at the model's own input size"), ("explained", "at the size explained")])
def test_the_closing_line_says_where_a_classifiers_predictions_come_from(photos, tmp_path, capsys, predict_at, where):
    code, out, err = run(capsys, "explain", photos / "cat.jpg", "--out", tmp_path, "--model", "torchvision:resnet18", "--weights", "none",
                         "--method", "normgrad", "--layers", "layer4", "--target", "3", "--predict-at", predict_at, "--workers", "0",
                         "--no-gallery")  # fmt: skip
    assert code == 0, err
    (record,) = json.loads((tmp_path / "summary.json").read_text())["images"]
    closing = out.splitlines()[3]
    predicted, explained = ("x".join(map(str, record[key])) for key in ("predicted_at", "explained_at"))
    assert closing.startswith(f"prediction and p: {where} (e.g. {predicted})")
    assert f"the maps explain the class under 'explained' (--target, else the prediction) at {explained}" in closing
