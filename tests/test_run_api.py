"""normgrad.explain: the run of `normgrad explain` from Python, on paths, folders, Datasets, DataLoaders and tensors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import normgrad as ng
from normgrad import pipeline
from normgrad.cli import main

SETTINGS = {"model": "torchvision:resnet18", "weights": "none", "method": "normgrad", "layers": "layer3,layer4", "workers": 0}
CLI = ["--model", "torchvision:resnet18", "--weights", "none", "--method", "normgrad", "--layers", "layer3,layer4", "--workers", "0"]


def photos(folder: Path, count: int = 3) -> list[Path]:
    """Small RGB photos of two sizes (two batches)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        size = (40, 48) if i % 2 else (48, 40)
        paths.append(folder / f"img{i}.png")
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def cli_maps(capsys, folder: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    assert main(["explain", str(folder), "--out", str(out), *CLI, *extra]) == 0, capsys.readouterr().err
    return {p.stem: np.load(p) for p in out.glob("*.npy")}


class Tensors(Dataset):
    """A Dataset of (C, H, W) float tensors in [0, 1] and labels, as torchvision's ToTensor gives them."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        pixels = np.asarray(Image.open(self.paths[i]).convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(pixels).permute(2, 0, 1), i % 2


def test_a_folder_in_memory_equals_the_cli_maps(tmp_path, capsys):
    paths = photos(tmp_path / "photos")
    expected = cli_maps(capsys, tmp_path / "photos", tmp_path / "cli")
    result = ng.explain(tmp_path / "photos", **SETTINGS)
    assert [e.name for e in result.images] == ["img0", "img1", "img2"] and result.ok
    for explained, path in zip(result.images, paths):
        width, height = Image.open(path).size
        assert explained.map.shape == (height, width) and explained.size == (width, height)
        np.testing.assert_array_equal(explained.map, expected[explained.name])
        assert explained.predictions[0]["probability"] >= explained.predictions[-1]["probability"]
        assert explained.target["class"] == explained.predictions[0]["class"]  # auto: the prediction


def test_a_dataset_of_tensors_equals_the_cli_maps_and_keeps_labels(tmp_path, capsys):
    paths = photos(tmp_path / "photos")
    expected = cli_maps(capsys, tmp_path / "photos", tmp_path / "cli")
    result = ng.explain(Tensors(paths), **SETTINGS)
    assert [e.label for e in result.images] == [0, 1, 0]
    for explained, path in zip(result.images, paths):
        np.testing.assert_array_equal(explained.map, expected[path.stem])


def test_a_dataloader_of_batches_and_a_tensor_batch(tmp_path, capsys):
    paths = [p for p in photos(tmp_path / "photos", 4) if p.stem in ("img0", "img2")]  # one size: a batch tensor
    expected = cli_maps(capsys, tmp_path / "photos", tmp_path / "cli")
    loader = DataLoader(Tensors(paths), batch_size=2)
    from_loader = ng.explain(loader, **SETTINGS)
    batch = torch.stack([Tensors(paths)[i][0] for i in range(2)])
    from_tensor = ng.explain(batch, **SETTINGS)
    for result in (from_loader, from_tensor):
        assert len(result.images) == 2
        for explained, path in zip(result.images, paths):
            np.testing.assert_array_equal(explained.map, expected[path.stem])
    assert [e.label for e in from_loader.images] == [0, 1] and from_tensor.images[0].label is None


def test_a_list_of_paths_into_a_folder_equals_the_cli_and_resumes(tmp_path, capsys):
    paths = photos(tmp_path / "photos")
    expected = cli_maps(capsys, tmp_path / "photos", tmp_path / "cli")
    out = tmp_path / "api"
    result = ng.explain(paths, out, **SETTINGS, verbose=False)
    assert len(result.records) == 3 and result.done_earlier == 0 and (out / "index.html").exists()
    for name, plane in expected.items():
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), plane)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    again = ng.explain(paths, out, **SETTINGS, resume=True, verbose=False)
    assert again.done_earlier == 3 and len(again.records) == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")} == before  # nothing written again
    with pytest.raises(ng.NormGradError, match="already holds normgrad results"):
        ng.explain(paths, out, **SETTINGS, verbose=False)  # neither --resume nor --overwrite


def test_a_dataset_into_a_folder_resumes_by_its_pixels(tmp_path):
    paths = photos(tmp_path / "photos")
    out = tmp_path / "api"
    first = ng.explain(Tensors(paths), out, **SETTINGS, verbose=False)
    assert [r["name"] for r in first.records] == ["000000", "000001", "000002"]
    assert [r["label"] for r in first.records] == [0, 1, 0]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    Image.fromarray(np.zeros((40, 48, 3), dtype=np.uint8)).save(paths[1])  # item 1's pixels change
    ng.explain(Tensors(paths), out, **SETTINGS, resume=True, verbose=False)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    assert [name for name in before if before[name] != after[name]] == ["000001.npy"]
    summary = json.loads((out / "summary.json").read_text())
    assert [e["name"] for e in summary["images"]] == ["000000", "000001", "000002"] and summary["failed"] == []


@pytest.mark.parametrize(
    ("inputs", "options", "message"),
    [
        ("photos", {"size": 4}, "--size must be at least 16 pixels"),
        ("photos", {"batch_sise": 4}, "unknown option 'batch_sise'"),
        ("photos", {"combine": "products"}, "--combine 'products' is not valid"),
        ("photos", {"method": "gradcam", "lr": 0.1}, "--lr only apply to meta/adversarial methods"),
        ("missing/*.png", {}, "no file matches"),
        (42, {}, "inputs must be a path"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, inputs, options, message):
    photos(tmp_path / "photos", 1)
    if isinstance(inputs, str):
        inputs = str(tmp_path / inputs)
    with pytest.raises(ng.NormGradError) as error:
        ng.explain(inputs, **{**SETTINGS, **options}, verbose=False)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_bad_item_is_skipped_with_its_reason(tmp_path):
    paths = photos(tmp_path / "photos", 2)
    good = Tensors(paths)[0][0]
    result = ng.explain([good, torch.randn(3, 40, 48) * 3], **SETTINGS, verbose=False)
    assert len(result.images) == 1 and len(result.failed) == 1
    assert "a float image must hold pixel values in [0, 1]" in result.failed[0]["error"]


def test_predictions_come_from_the_models_own_size_and_the_maps_explain_that_class(tmp_path):
    """scikit-image's astronaut: 'bobsled' at the embedded model's 224 × 224, 'football helmet' at the 448 × 448 explained."""
    skimage = pytest.importorskip("skimage.data")
    path = tmp_path / "astronaut.png"
    ng.images.from_array(skimage.astronaut()).save(path)
    loaded = ng.models.load()
    own = ng.explain(path, model=loaded, verbose=False).images[0]
    enlarged = ng.explain(path, model=loaded, predict_at="explained", verbose=False).images[0]
    assert own.predicted_at == (224, 224) and own.explained_at == (448, 448) == enlarged.predicted_at
    assert own.predictions[0]["name"] == "bobsled" and enlarged.predictions[0]["name"] == "football helmet"
    assert own.target["class"] == own.predictions[0]["class"]  # auto: the model's prediction at its own size
    expected = pipeline.predict(loaded.model, pipeline.prepare(ng.images.load_image(path), loaded.preprocess)[None])
    assert own.predictions[0]["probability"] == pytest.approx(float(expected.probabilities[0, 450]), abs=1e-6)
    same_class = ng.explain(path, model=loaded, predict_at="explained", target=own.target["class"], verbose=False).images[0]
    np.testing.assert_array_equal(own.map, same_class.map)  # the maps explain that class at the explained size
