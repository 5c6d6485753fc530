"""The application pipeline (predict, targets, maps at image size), image limits, and the names users type."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import normgrad as ng
from conftest import SmallNet, randomize_batchnorm
from normgrad import pipeline
from normgrad.baselines import captum_target
from normgrad.evaluation.common import maps_at
from normgrad.images import MAX_INPUT_PIXELS, load_image
from normgrad.models import LoadedModel, Preprocess, imagenet_classes
from normgrad.registry import get_method


class Thing:
    """Not a tensor: a checkpoint holding it needs pickle's code execution, which normgrad refuses."""


@pytest.fixture
def loaded():
    return LoadedModel("small", randomize_batchnorm(SmallNet()).eval(), Preprocess(size=24), [f"class {i}" for i in range(7)])


def test_predict_gives_logits_and_probabilities_and_leaves_the_mode(loaded):
    x = torch.randn(3, 3, 24, 30)
    loaded.model.train()
    prediction = pipeline.predict(loaded.model, x)
    assert loaded.model.training  # restored
    with torch.no_grad():
        expected = loaded.model.eval()(x)
    torch.testing.assert_close(prediction.logits, expected)
    torch.testing.assert_close(prediction.probabilities.sum(1), torch.ones(3))
    assert prediction.classes.tolist() == expected.argmax(1).tolist()
    top = prediction.top(1, 3, loaded.class_name)
    assert [t["class"] for t in top] == expected[1].topk(3).indices.tolist() and top[0]["name"] == loaded.class_name(top[0]["class"])
    assert len(prediction.top(0, 50)) == 7


def test_targets_auto_index_and_names():
    names = imagenet_classes()
    assert pipeline.resolve_target("auto", names) is None and pipeline.resolve_target(None, names) is None
    assert pipeline.resolve_target("281", names) == 281 and pipeline.resolve_target("tabby", names) == 281
    assert pipeline.resolve_target("Tiger Cat", names) == 282
    with pytest.raises(ng.NormGradError, match=r"out of range: the model has 1000 classes"):
        pipeline.resolve_target("1000", names)
    with pytest.raises(ng.NormGradError, match="negative"):
        pipeline.parse_target("-3")
    with pytest.raises(ng.NormGradError, match=r"unknown class name 'tigre cat'; closest names: 'tiger cat'"):
        pipeline.resolve_target("tigre cat", names)
    with pytest.raises(ng.NormGradError, match="ambiguous"):
        pipeline.resolve_target("cat", names)
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    prediction = pipeline.Prediction(logits, logits.softmax(1))
    assert pipeline.targets(None, prediction).tolist() == [1, 0] and pipeline.targets(2, prediction).tolist() == [2, 2]


def test_to_image_size_modes():
    maps = {"a": torch.rand(2, 1, 4, 5), "b": torch.rand(2, 1, 8, 10) - 0.5}
    size = (16, 20)
    combined = pipeline.to_image_size(maps, size)
    assert list(combined) == ["combined"]
    torch.testing.assert_close(combined["combined"], ng.combine(maps, size=size))
    both = pipeline.to_image_size(maps, size, "sum", layers=True)
    assert list(both) == ["a", "b", "combined"]
    torch.testing.assert_close(both["b"], ng.upsample(maps["b"], size))  # as it is: the sign kept
    raw = pipeline.to_image_size({"input": maps["b"]}, size, "raw")
    assert float(raw["combined"].min()) < 0
    assert list(pipeline.to_image_size(maps, size, "none", layers=True)) == ["a", "b"]
    with pytest.raises(ng.NormGradError, match="exactly one map"):
        pipeline.to_image_size(maps, size, "raw")
    with pytest.raises(ng.NormGradError, match="unknown combine mode"):
        pipeline.to_image_size(maps, size, "mean")
    with pytest.raises(ng.NormGradError, match="named 'combined'"):
        pipeline.to_image_size({"combined": maps["a"]}, size, layers=True)
    with pytest.raises(ng.NormGradError, match="NaN or infinite"):
        pipeline.check_finite({"x": torch.tensor([[[[float("nan")]]]])})


def test_study_maps_keep_their_definition(loaded):
    """evaluation.common.maps_at through the pipeline: per-layer maps as they are, the product, raw input-level maps."""
    x = torch.randn(2, 3, 24, 30)
    layers = ["features.3", "features.8"]
    size = (24, 30)
    maps = maps_at(get_method("normgrad"), loaded, x, [1, 2], layers, size)
    raw = ng.normgrad(loaded.model, x, [1, 2], layers=layers)
    assert list(maps) == [*layers, "combined"]
    torch.testing.assert_close(maps["features.8"], ng.upsample(raw["features.8"], size))
    torch.testing.assert_close(maps["combined"], ng.combine(raw, size=size))
    signed = maps_at(get_method("input_x_gradient"), loaded, x, [1, 2], layers, size)
    torch.testing.assert_close(signed["combined"], ng.baselines.input_x_gradient(loaded.model, x, [1, 2])["input"])
    centre = maps_at(get_method("center"), loaded, x, None, layers, (9, 11))["combined"]
    assert centre.shape == (2, 1, 9, 11) and int(centre[0, 0].flatten().argmax()) == 4 * 11 + 5


def test_prepare_refuses_huge_inputs_before_resizing():
    calls = []

    class Counting(Preprocess):
        def __call__(self, image):
            calls.append(image.size)
            return super().__call__(image)

    preprocess = Counting(size=224)
    strip = Image.new("RGB", (6000, 30))
    with pytest.raises(ng.NormGradError, match=r"224×44800 model input"):
        pipeline.prepare(strip, preprocess)
    assert calls == []  # refused from the size alone
    assert pipeline.prepare(Image.new("RGB", (40, 30)), preprocess).shape == (3, 224, 299)
    with pytest.raises(ng.NormGradError, match="NaN"):
        pipeline.prepare(Image.new("RGB", (4, 4)), lambda image: torch.full((3, 4, 4), float("nan")))
    assert MAX_INPUT_PIXELS >= 224 * 4480


def png_header_only(path, width, height):
    """A PNG whose header claims width × height; its pixel data is not there (a decompression bomb's shape)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b""))


def test_image_limits_and_nan_pixels(tmp_path):
    png_header_only(tmp_path / "bomb.png", 15000, 12000)  # beyond Pillow's own bomb limit (179 MP): refused at open
    with pytest.raises(ng.NormGradError, match=r"'.*bomb.png' is larger than 67.1 megapixels"):
        load_image(tmp_path / "bomb.png")
    png_header_only(tmp_path / "large.png", 10000, 8000)  # below it: refused from the header, before decoding
    with pytest.raises(ng.NormGradError, match=r"10000×8000 = 80.0 megapixels; the limit is 67.1"):
        load_image(tmp_path / "large.png")
    Image.new("RGB", (3000, 6)).save(tmp_path / "strip.png")
    with pytest.raises(ng.NormGradError, match=r"aspect ratio of 500:1; the limit is 20:1"):
        load_image(tmp_path / "strip.png")
    assert load_image(tmp_path / "strip.png", max_aspect_ratio=None).size == (3000, 6)
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    assert load_image(tmp_path / "float.tif").size == (8, 8)
    values[3, 4] = np.nan  # issue case 11
    Image.fromarray(values, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(ng.NormGradError, match="1 NaN or infinite pixel"):
        load_image(tmp_path / "nan.tif")
    with pytest.raises(ng.NormGradError, match="NaN"):
        ng.images.from_array(np.full((4, 4), np.inf))


def test_names_users_type_get_the_closest_suggestions(tmp_path):
    with pytest.raises(ng.NormGradError, match=r"unknown method 'normgard' \(did you mean 'normgrad'"):
        get_method("normgard")
    with pytest.raises(ng.NormGradError, match=r"aggregate 'mx' is unknown \(did you mean 'max'"):
        get_method("conv3x3+mx")
    with pytest.raises(ng.NormGradError, match="finite number"):
        get_method("meta", lr=float("inf"))
    with pytest.raises(ng.NormGradError, match="does not use the model"):
        get_method("meta:center")

    torch.save({"weight": Thing()}, tmp_path / "pickled.pth")
    with pytest.raises(ng.NormGradError) as info:
        ng.models.load("torchvision:resnet18", weights=tmp_path / "pickled.pth")
    message = str(info.value)
    assert "\n" not in message and "weights_only=False" not in message and "Thing" in message and "state_dict()" in message


def test_captum_targets_follow_the_target_rules(loaded):
    x = torch.randn(2, 3, 24, 30)
    model = loaded.model
    forward, index = captum_target(model, x, None)
    assert forward is model and index.tolist() == model(x).argmax(1).tolist()
    forward, index = captum_target(model, x, ng.TrainingLoss())
    labels = model(x).argmax(1)
    assert index is None
    torch.testing.assert_close(forward(x), -torch.nn.functional.cross_entropy(model(x), labels, reduction="none"))
    forward, _ = captum_target(model, x, lambda output: output[:, 3])
    torch.testing.assert_close(forward(x), model(x)[:, 3])
    with pytest.raises(ng.NormGradError, match="out of range"):
        captum_target(model, x, 7)
    with pytest.raises(ng.NormGradError, match="Unit targets"):
        captum_target(model, x, ng.Unit("features.3", 0))


# ----------------------------------------------------------------------------- one pass per batch


@pytest.mark.parametrize("name", ["normgrad", "selective", "scaling+sum", "conv3x3+max", "layered"])
@pytest.mark.parametrize("target", [None, 3])
def test_explain_batch_takes_predictions_from_the_engine_pass(loaded, name, target):
    """Engine methods: maps bitwise those of predict → targets → method, predictions to float tolerance, one forward only."""
    from normgrad.defaults import layered

    layers = ["features.2", "features.7", "features.9"]
    method = layered({"features.2": "selective", "features.9": "scaling+sum"}) if name == "layered" else get_method(name)
    assert method.engine
    x = torch.randn(4, 3, 24, 30)
    calls = []
    handle = loaded.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        usable, prediction, targets, maps = pipeline.explain_batch(method, loaded.model, x, target, layers)
    finally:
        handle.remove()
    assert len(calls) == 1  # the default's two methods too: one pass
    expected_prediction = pipeline.predict(loaded.model, x)
    expected_targets = pipeline.targets(target, expected_prediction)
    expected = pipeline.run_method(method, loaded.model, x, expected_targets, layers)
    assert usable == [0, 1, 2, 3] and torch.equal(targets, expected_targets)
    torch.testing.assert_close(prediction.logits, expected_prediction.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prediction.probabilities, expected_prediction.probabilities, rtol=1e-5, atol=1e-7)
    assert list(maps) == layers and all(torch.equal(maps[k], expected[k]) for k in layers)


@pytest.mark.parametrize("name", ["selective", "gradient", "center"])
def test_explain_batch_leaves_out_samples_with_non_finite_logits(loaded, name):
    x = torch.randn(3, 3, 24, 30)
    x[1] = float("nan")
    usable, prediction, targets, maps = pipeline.explain_batch(get_method(name), loaded.model, x, None, ["features.7"])
    assert usable == [0, 2] and prediction.logits.shape == (2, 7) and targets.shape == (2,)
    if name == "center":
        assert maps is None
        return
    expected = pipeline.run_method(get_method(name), loaded.model, x[[0, 2]], targets, ["features.7"])
    for key in expected:
        assert maps[key].shape[0] == 2 and torch.isfinite(maps[key]).all()
        torch.testing.assert_close(maps[key], expected[key])


def test_meta_keeps_the_original_models_prediction(loaded):
    """Meta-saliency explains the class the *original* model predicts: its predictions come from a forward of its own."""
    method = get_method("meta", lr=0.5)
    assert not method.engine
    x = torch.randn(2, 3, 24, 30)
    _, prediction, targets, _ = pipeline.explain_batch(method, loaded.model, x, None, ["features.7"])
    torch.testing.assert_close(prediction.logits, pipeline.predict(loaded.model, x).logits)
    assert targets.tolist() == pipeline.predict(loaded.model, x).classes.tolist()


def test_upsampling_a_batch_equals_each_image_alone():
    maps = {"a": torch.rand(5, 1, 4, 5), "b": torch.rand(5, 1, 8, 10) - 0.5}
    together = pipeline.to_image_size(maps, (37, 45), "product", layers=True)
    for i in range(5):
        alone = pipeline.to_image_size({k: m[i : i + 1] for k, m in maps.items()}, (37, 45), "product", layers=True)
        assert all(torch.equal(together[k][i : i + 1], alone[k]) for k in alone)


@pytest.mark.parametrize("photo_size", [(400, 300), (90, 160)])
def test_pixels_handed_over_by_readers_normalise_to_the_same_inputs(photo_size):
    """Readers hand over uint8 pixels and the main process normalises them: the very tensors of the one-step path."""
    from normgrad.models import Preprocess
    from normgrad.run.loading import Item, Prepare

    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (*photo_size[::-1], 3), dtype=np.uint8))
    explained, own_size = Preprocess(max_size=448), Preprocess()
    for prepare in (Prepare(explained), Prepare(explained, own_size), Prepare(own_size, own_size)):
        x, own = prepare.read(photo)
        assert x.dtype == torch.uint8 and (own is None or own.dtype == torch.uint8)
        item = prepare.finish(Item(0, Path("p.png"), "p", x, photo, predict_tensor=own, pixels=True))
        expected, expected_own = prepare(photo)
        assert torch.equal(item.tensor, expected) and not item.pixels
        assert (item.predict_tensor is None and expected_own is None) or torch.equal(item.predict_tensor, expected_own)


def test_a_preprocess_that_does_not_split_is_read_in_one_step():
    from normgrad.run.loading import Prepare

    prepare = Prepare(lambda photo: torch.zeros(3, photo.height, photo.width))
    assert not prepare.splits
    x, own = prepare.read(Image.new("RGB", (20, 10)))
    assert x.dtype == torch.float32 and x.shape == (3, 10, 20) and own is None
