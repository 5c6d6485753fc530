"""normgrad explain --task detect: a torchvision detector by name with the user's weights; one map per detection."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from normgrad.cli import main

SSD = "ssdlite320_mobilenet_v3_large"  # small and fast; random weights score every box about 1/91


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import torchvision

    path = tmp_path_factory.mktemp("weights") / "ssd.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(SSD, weights=None, weights_backbone=None).state_dict(), path)  # COCO's 91 classes
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "street.png"
    Image.fromarray((np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)).save(path)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def detect(capsys, photo, weights, out, *more):
    return run(capsys, "explain", photo, "--task", "detect", "--model", f"torchvision:{SSD}", "--weights", weights, "--out", out, *more)


def test_each_detection_above_the_score_gets_its_own_map_and_record(capsys, photo, weights, tmp_path):
    code, out, err = detect(capsys, photo, weights, tmp_path, "--min-score", "0", "--max-detections", "2")
    assert code == 0, err
    [record] = json.loads((tmp_path / "summary.json").read_text())["images"]
    assert [d["output"] for d in record["detections"]] == ["det1", "det2"]
    assert [o["layer"] for o in record["outputs"]] == ["combined", "det1", "det2"]
    for d in record["detections"]:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= 160 and 0 <= y0 <= y1 <= 120 and d["score"] >= 0
    assert record["layers"][:2] == ["backbone.features.0", "backbone.features.1"]  # the detector's feature levels
    for stem in ("street", "street_det1", "street_det2"):
        plane = np.load(tmp_path / f"{stem}.npy")
        assert plane.shape == (120, 160) and np.isfinite(plane).all() and plane.max() > plane.min()
        assert Image.open(tmp_path / f"{stem}.png").size == (160, 120)
    assert not np.array_equal(np.load(tmp_path / "street_det1.npy"), np.load(tmp_path / "street_det2.npy"))
    assert "street" in (tmp_path / "index.html").read_text() or (tmp_path / "gallery").is_dir()


def test_the_boxes_are_drawn_on_the_overlays(capsys, photo, weights, tmp_path):
    assert detect(capsys, photo, weights, tmp_path, "--min-score", "0", "--max-detections", "1", "--no-gallery")[0] == 0
    [record] = json.loads((tmp_path / "summary.json").read_text())["images"]
    x0, y0, x1, y1 = (int(round(v)) for v in record["detections"][0]["box"])
    overlay = np.asarray(Image.open(tmp_path / "street_det1.png").convert("RGB")).astype(int)
    edge = overlay[min(max(y0, 0), 119), x0 + 2 : x1 - 2]  # the top edge of the box explained: drawn in white, over the map
    assert (edge == 255).all(axis=-1).mean() > 0.9


def test_a_photo_without_a_detection_above_the_score_is_skipped_with_one_line(capsys, photo, weights, tmp_path):
    code, _, err = detect(capsys, photo, weights, tmp_path, "--min-score", "0.9")
    assert code == 1
    assert "no detection scores ≥ 0.9" in err and "lower --min-score" in err


@pytest.mark.parametrize(
    ("more", "message"),
    [
        (["--target", "1"], "--target does not apply to --task detect"),
        (["--size", "200"], "--size does not apply to --task detect"),
        (["--method", "gradient"], "--task detect explains detections with normgrad, selective"),
        (["--min-score", "1.5"], "--min-score must be a score in [0, 1]"),
        (["--combine", "none"], "--combine none does not apply to --task detect"),
    ],
)
def test_options_detection_would_ignore_are_refused_in_one_line(capsys, photo, weights, tmp_path, more, message):
    code, _, err = detect(capsys, photo, weights, tmp_path, *more)
    assert code == 2 and message in err and err.count("\n") == 1


def test_a_classifier_is_refused_for_detection_and_detection_options_without_it(capsys, photo, tmp_path):
    classifier = ("--model", "torchvision:resnet18", "--weights", "none")
    code, _, err = run(capsys, "explain", photo, "--task", "detect", *classifier, "--out", tmp_path)
    assert code == 2 and "--task detect needs a torchvision detector" in err
    code, _, err = run(capsys, "explain", photo, "--min-score", "0.3", "--out", tmp_path)
    assert code == 2 and "--min-score only apply to --task detect" in err


def test_a_detector_without_the_detect_task_is_refused_in_one_line(capsys, photo, weights, tmp_path):
    code, _, err = run(capsys, "explain", photo, "--model", f"torchvision:{SSD}", "--weights", weights, "--out", tmp_path)
    assert code == 2 and "is a detector: add --task detect" in err and err.count("\n") == 1


def test_the_python_api_explains_detections_in_memory(photo, weights):
    import normgrad as ng

    result = ng.explain(photo, model=f"torchvision:{SSD}", weights=weights, task="detect", min_score=0.0, max_detections=2, verbose=False)
    [image] = result.images
    assert [d["number"] for d in image.detections] == [1, 2]
    assert set(image.maps) == {"combined", "det1", "det2"} and image.maps["det1"].shape == (120, 160)


def test_a_detector_fine_tuned_on_other_classes_loads_with_its_class_count(capsys, photo, tmp_path):
    import torchvision

    path = tmp_path / "seven.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(SSD, weights=None, weights_backbone=None, num_classes=7).state_dict(), path)
    code, _, err = detect(capsys, photo, path, tmp_path / "out", "--min-score", "0", "--max-detections", "1")
    assert code == 0, err
    [record] = json.loads((tmp_path / "out" / "summary.json").read_text())["images"]
    [found] = record["detections"]
    assert 0 <= found["class"] < 7 and found["name"] == f"class {found['class']}"


def test_the_closing_line_of_a_detect_run_says_its_predictions_are_detections(capsys, photo, weights, tmp_path):
    code, out, err = detect(capsys, photo, weights, tmp_path, "--min-score", "0", "--max-detections", "1")
    assert code == 0, err
    closing = out.splitlines()[3]
    assert closing.startswith("prediction and p: each photo's best detection and its score; the maps explain all detections")
