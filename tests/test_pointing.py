"""The pointing game on fixtures in the exact VOC 2007 and COCO 2014 formats, numbers computed by hand.

VOC fixture: three 100×80 JPEGs; the centre baseline points at (row 40, col 50).

==========  =========================================================  ======================
image       objects (1-based inclusive boxes)                          at tolerance 15
==========  =========================================================  ======================
000001      cat 60,30-70,50: nearest pixel 9 px away                    cat hit
            dog 66,41-90,41: nearest pixel exactly 15 px away           dog miss (15 is not < 15)
000002      cat 1,1-10,10: far                                          cat miss
            person, difficult only                                      skipped
            dog: difficult 51,41-52,42 (covers the point) + far box     dog hit (union of boxes)
000003      dog 62,51-80,70: nearest pixel (50, 61), √221 = 14.87 px    dog hit (miss at 14.8)
==========  =========================================================  ======================

All, tolerance 15: cat 1/2, dog 2/3 → accuracy (1/2 + 2/3)/2 = 0.58333 (pooled would be 3/5).
Difficult subset (computed): 000001 cat, dog and 000002 cat, dog (small, another class
present); 000003's dog is alone → cat 1/2, dog 1/2 → 0.5.
"""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from normgrad.cli import main
from normgrad.evaluation.datasets import COCO2014, VOC2007, AnnotatedImage, read_difficult_flags
from normgrad.evaluation.pointing import first_argmax, is_hit, method_maps, run_pointing_game
from normgrad.registry import get_method

VOC_OBJECTS = {
    "000001": [("cat", (60, 30, 70, 50), 0), ("dog", (66, 41, 90, 41), 0)],
    "000002": [("cat", (1, 1, 10, 10), 0), ("person", (40, 30, 60, 50), 1), ("dog", (51, 41, 52, 42), 1), ("dog", (90, 1, 100, 5), 0)],
    "000003": [("dog", (62, 51, 80, 70), 0)],
}


def write_voc(root):
    base = root / "VOCdevkit" / "VOC2007"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / folder).mkdir(parents=True)
    (base / "ImageSets/Main/test.txt").write_text("\n".join(VOC_OBJECTS) + "\n")
    rng = np.random.default_rng(0)
    for image_id, objects in VOC_OBJECTS.items():
        Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{image_id}.jpg")
        annotation = ET.Element("annotation")
        ET.SubElement(annotation, "filename").text = f"{image_id}.jpg"
        size = ET.SubElement(annotation, "size")
        for key, value in (("width", 100), ("height", 80), ("depth", 3)):
            ET.SubElement(size, key).text = str(value)
        for name, (x0, y0, x1, y1), difficult in objects:
            obj = ET.SubElement(annotation, "object")
            ET.SubElement(obj, "name").text = name
            ET.SubElement(obj, "pose").text = "Unspecified"
            ET.SubElement(obj, "truncated").text = "0"
            ET.SubElement(obj, "difficult").text = str(difficult)
            box = ET.SubElement(obj, "bndbox")
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x1, y1)):
                ET.SubElement(box, key).text = str(value)
        ET.ElementTree(annotation).write(base / "Annotations" / f"{image_id}.xml")
    return root


@pytest.fixture
def voc(tmp_path):
    return write_voc(tmp_path / "voc")


def center_result(root, **options):
    return run_pointing_game(VOC2007(root), method_maps(None, get_method("center"), None), **options)


def test_voc_reader_one_based_boxes_and_difficult_classes(voc):
    dataset = VOC2007(voc)
    first = dataset.load("000001")
    assert (first.width, first.height) == (100, 80)
    assert first.boxes[7] == [(59, 29, 69, 49)]  # 1-based inclusive -> 0-based inclusive
    assert first.mask(7).sum() == 11 * 21
    second = dataset.load("000002")
    assert second.classes == [7, 11]  # person (all boxes difficult) skipped
    assert second.mask(11)[40, 50] and second.mask(11).sum() == 4 + 55  # difficult box included in the union


@pytest.mark.parametrize(
    "tolerance, expected",
    [(15.0, (1 / 2 + 2 / 3) / 2), (15.1, (1 / 2 + 3 / 3) / 2), (14.9, (1 / 2 + 2 / 3) / 2), (14.8, (1 / 2 + 1 / 3) / 2)],
)
def test_center_baseline_accuracy_by_hand(voc, tolerance, expected):
    result = center_result(voc, tolerance=tolerance)
    assert result["accuracy"] == pytest.approx(expected)
    assert result["per_class"]["person"] is None and result["per_class"]["cat"] == pytest.approx(0.5)
    assert result["pairs"] == 5


def test_difficult_subset_computed_and_from_flags(voc, tmp_path):
    result = center_result(voc, subset="difficult")
    assert result["pairs"] == 4 and result["accuracy"] == pytest.approx(0.5)
    flags = tmp_path / "difficult.txt"
    rows = {"000001": [0] * 20, "000002": [0] * 20, "000003": [0] * 20}
    rows["000003"][11] = 1  # only the lone dog
    flags.write_text("".join(f"{image_id}\t" + "\t".join(map(str, values)) + "\n" for image_id, values in rows.items()))
    parsed = read_difficult_flags(flags, 20)
    result = center_result(voc, subset="difficult", difficult_flags=parsed)
    assert result["pairs"] == 1 and result["accuracy"] == pytest.approx(1.0) and result["per_class"]["cat"] is None


def test_hit_rule_and_first_argmax():
    mask = np.zeros((50, 50), bool)
    mask[10, 25] = True
    assert not is_hit(mask, (10, 10), 15.0) and is_hit(mask, (10, 11), 15.0)  # distance 15 vs 14
    assert is_hit(mask, (10, 10), 15.01)
    flat = np.zeros((4, 4))
    flat[1, 2] = flat[3, 0] = 1.0
    assert first_argmax(flat) == (1, 2)  # the first maximum in row-major order


def test_is_difficult_definition():
    alone = AnnotatedImage("a", None, 10, 10, boxes={0: [(0, 0, 1, 1)]})
    assert not alone.is_difficult(0)  # small but no other class
    pair = AnnotatedImage("b", None, 10, 10, boxes={0: [(0, 0, 1, 1)], 1: [(0, 0, 9, 9)]})
    assert pair.is_difficult(0) and not pair.is_difficult(1)  # 4% vs 100% of the image


def test_resume_skips_finished_images(voc, tmp_path):
    partial = tmp_path / "run.partial.jsonl"
    partial.write_text(json.dumps({"image": "000001", "pairs": [[7, True], [11, True]]}) + "\n")  # pretend results
    calls = []
    maps = method_maps(None, get_method("center"), None)
    result = run_pointing_game(
        VOC2007(voc), lambda image, classes: calls.append(image.image_id) or maps(image, classes), resume_file=partial
    )
    assert calls == ["000002", "000003"]
    assert result["hits"]["dog"] == 3  # the resumed (pretend) hit counts
    assert len(partial.read_text().splitlines()) == 3


def write_coco(root):
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / "val2014" / "COCO_val2014_000000000042.jpg")
    dog = np.zeros((40, 60), np.uint8)
    dog[0:5, 0:5] = 1
    flat = dog.flatten(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    data = {
        "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "width": 60, "height": 40}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 1, "iscrowd": 0, "segmentation": [[25, 15, 35, 15, 35, 25, 25, 25]]},
            {"id": 2, "image_id": 42, "category_id": 18, "iscrowd": 1, "segmentation": {"counts": counts, "size": [40, 60]}},
        ],
    }
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    return root


def test_coco_masks_polygons_and_rle(tmp_path):
    dataset = COCO2014(write_coco(tmp_path / "coco"))
    assert dataset.class_names == ("person", "dog")  # ordered by category id
    image = dataset.load("42")
    assert image.mask(1).sum() == 25 and image.mask(1)[0:5, 0:5].all()
    assert image.mask(0)[20, 30]
    result = run_pointing_game(dataset, method_maps(None, get_method("center"), None))
    assert result["per_class"] == {"person": 1.0, "dog": 0.0} and result["accuracy"] == pytest.approx(0.5)


def test_cli_pointing_center_and_a_model(voc, tmp_path, capsys):
    out = tmp_path / "center.json"
    assert main(["eval", "pointing", "--dataset", "voc07", "--root", str(voc), "--method", "center", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2) and saved["hits"]["dog"] == 2 and saved["misses"]["cat"] == 1
    assert "58.3%" in capsys.readouterr().out
    assert main(["eval", "pointing", "--dataset", "voc07", "--root", str(voc), "--method", "center", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    model_out = tmp_path / "resnet.json"
    argv = ["eval", "pointing", "--dataset", "voc07", "--root", str(voc), "--model", "torchvision:resnet18", "--weights", "none"]
    assert main([*argv, "--method", "selective", "--layers", "layer3,layer4", "--out", str(model_out)]) == 0
    assert json.loads(model_out.read_text())["pairs"] == 5
    code = main(["eval", "pointing", "--dataset", "voc07", "--root", str(voc), "--method", "gradcam", "--out", str(tmp_path / "x.json")])
    assert code == 2 and "1000 outputs but voc07 has 20 classes" in capsys.readouterr().err
    code = main(
        [
            "eval",
            "pointing",
            "--dataset",
            "voc07",
            "--root",
            str(tmp_path / "nowhere"),
            "--method",
            "center",
            "--out",
            str(tmp_path / "y.json"),
        ]
    )
    assert code == 2 and "no VOC 2007 folder" in capsys.readouterr().err
