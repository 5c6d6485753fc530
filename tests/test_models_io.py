"""Models (embedded, torchvision, timm, local files), images (formats, EXIF), overlays."""

import urllib.error

import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from PIL import Image

import normgrad as ng
from normgrad import images, models, viz
from normgrad.engine.default_layers import auto_layers
from normgrad.engine.describe import describe_layers


@pytest.fixture(scope="module")
def embedded():
    return models.load()


def test_embedded_model_classifies_a_real_cat(embedded):
    photo = images.from_array(skimage.data.chelsea())
    x = embedded.preprocess(photo)[None]
    assert x.shape == (1, 3, 224, 337)  # shorter side 224, aspect kept
    top = embedded.model(x).softmax(1)[0].topk(3).indices.tolist()
    assert set(top) <= {281, 282, 283, 284, 285, 287}, top
    assert embedded.class_name(285) == "Egyptian cat"
    assert embedded.class_index("egyptian cat") == 285
    assert not embedded.model.training
    assert embedded.default_layers(x) == ["blocks.1", "blocks.2", "blocks.4", "bn2"]


def test_maps_point_at_the_cat_face(embedded):
    photo = images.from_array(skimage.data.chelsea())  # 451×300; the face fills the centre-right
    x = embedded.preprocess(photo)[None]
    maps = ng.normgrad(embedded.model, x, layers=embedded.default_layers(x))
    combined = ng.combine(maps, size=(300, 451))
    row, col = np.unravel_index(int(combined.flatten().argmax()), (300, 451))
    assert 60 < row < 280 and 100 < col < 380


def test_torchvision_and_local_weights(tmp_path):
    random = models.load("torchvision:resnet18", weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(random.model.state_dict(), path)
    again = models.load("torchvision:resnet18", weights=path)
    for a, b in zip(random.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert again.default_layers() == ["layer1", "layer2", "layer3", "layer4"]
    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet34().state_dict(), wrong)
    with pytest.raises(ng.NormGradError, match="does not fit the architecture"):
        models.load("torchvision:resnet18", weights=wrong)
    with pytest.raises(ng.NormGradError, match="does not exist"):
        models.load("torchvision:resnet18", weights=tmp_path / "missing.pth")


def test_timm_with_random_weights():
    loaded = models.load("timm:resnet18", weights=None)
    assert loaded.preprocess.size == 224 and len(loaded.class_names) == 1000


def test_offline_download_gives_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ng.NormGradError, match="offline\\? Pass a local state dict with weights='file.pth'"):
        models.load("torchvision:resnet18")


@pytest.mark.parametrize("name, message", [("resnet50", "unknown model"), ("torchvision:resnet5O", "unknown torchvision model 'resnet5O'")])
def test_unknown_models(name, message):
    with pytest.raises(ng.NormGradError, match=message):
        models.load(name, weights=None)


def test_describe_layers_lists_types_shapes_and_calls():
    infos = {i.name: i for i in describe_layers(torchvision.models.resnet18(), torch.zeros(1, 3, 64, 64))}
    assert infos["input"].output_shape == (1, 3, 64, 64)
    assert infos["layer2"].type == "Sequential" and infos["layer2"].output_shape == (1, 128, 8, 8)
    assert infos["layer1.0.relu"].calls == 2
    assert auto_layers(torchvision.models.vgg11(), torch.zeros(1, 3, 64, 64))[:2] == [
        "features.9",
        "features.14",
    ]  # the ReLU before each pool


def save_formats(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    files = {}
    Image.fromarray(rgb).save(files.setdefault("jpeg", tmp_path / "a.jpg"))
    Image.fromarray(rgb).save(files.setdefault("webp", tmp_path / "a.webp"))
    Image.fromarray(rgb).save(files.setdefault("tiff", tmp_path / "a.tiff"))
    Image.fromarray(rgb[..., 0]).save(files.setdefault("gray", tmp_path / "gray.png"))
    rgba = np.dstack([rgb, np.full((30, 40), 128, np.uint8)])
    Image.fromarray(rgba).save(files.setdefault("rgba", tmp_path / "rgba.png"))
    Image.fromarray(rgb).convert("P").save(files.setdefault("palette", tmp_path / "p.png"))
    Image.fromarray((rng.integers(0, 65535, (30, 40))).astype(np.uint16)).save(files.setdefault("16bit", tmp_path / "16.png"))
    return files


def test_image_formats_become_rgb_at_original_size(tmp_path):
    for kind, path in save_formats(tmp_path).items():
        image = images.load_image(path)
        assert image.mode == "RGB" and image.size == (40, 30), kind
    sixteen = np.asarray(images.load_image(tmp_path / "16.png"))
    assert sixteen.max() > 200  # rescaled, not clipped to white


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(np.zeros((30, 40, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90°
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert images.load_image(tmp_path / "rotated.jpg").size == (30, 40)


def test_unreadable_images(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ng.NormGradError, match="cannot read image"):
        images.load_image(tmp_path / "broken.png")
    with pytest.raises(ng.NormGradError, match="does not exist"):
        images.load_image(tmp_path / "missing.jpg")


def test_overlay_and_grid(tmp_path):
    photo = images.from_array(skimage.data.coffee())
    heat = torch.rand(1, 1, 7, 9)
    blended = viz.overlay(photo, heat)
    assert blended.size == photo.size
    viz.grid(photo, {"a": {"m1": heat, "m2": heat}, "b": {"m1": heat}}, title="t", path=tmp_path / "g.png")
    with_bars = viz.grid(photo, {"a": {"m1": heat}}, colorbar=True)
    assert with_bars.axes[-1].get_ylabel() == "saliency (normalised)"  # the map's colormap, not the RGB overlay's
    assert (tmp_path / "g.png").stat().st_size > 1000
    figure = viz.overlay_figure(photo, heat, colorbar=True, title="coffee", path=tmp_path / "o.png")
    assert len(figure.axes) == 2 and (tmp_path / "o.png").stat().st_size > 1000  # image + colorbar
    original = images.to_original_size(heat, *photo.size)
    assert original.shape == (1, 1, photo.size[1], photo.size[0])
