"""Hugging Face image models: every target on a ModelOutput, meta-saliency, Captum, and the hf:DIR loader."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import normgrad as ng
from normgrad.captum import LayerNormGrad
from normgrad.models import load
from test_engine import assert_untouched, snapshot

transformers = pytest.importorskip("transformers")

TINY_VIT = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, patch_size=16, image_size=(32, 48))
LABELS = {0: "cat", 1: "dog", 2: "bird"}


class LogitsOnly(nn.Module):
    """The same model returning its logits tensor: what every target must see in a ModelOutput."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTConfig(**TINY_VIT, num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():  # transformers installs its output-capturing hooks on the first forward: the model as users hold it
        model(torch.zeros(1, 3, 32, 48))
    return model


@pytest.mark.parametrize("target", [None, 2, [0, 1], ng.TrainingLoss(), ng.TrainingLoss([2, 0]), ng.Unit("vit.layers.2", 3)])
def test_every_target_reads_a_model_outputs_logits(vit, target):
    x = torch.randn(2, 3, 32, 48)
    before = snapshot(vit)
    maps = ng.normgrad(vit, x, target, layers=["vit.layers.0", "vit.layers.1"])
    wrapped_target = ng.Unit(f"model.{target.layer}", target.channel) if isinstance(target, ng.Unit) else target
    plain = ng.normgrad(LogitsOnly(vit), x, wrapped_target, layers=["model.vit.layers.0", "model.vit.layers.1"])
    for layer in maps:
        assert maps[layer].shape == (2, 1, 2, 3)
        torch.testing.assert_close(maps[layer], plain[f"model.{layer}"], rtol=0, atol=0)
    assert_untouched(vit, before)


def test_meta_saliency_steps_on_the_logits_of_a_model_output(vit):
    x = torch.randn(2, 3, 32, 48)
    meta = ng.meta_saliency(vit, x, None, lr=1e-2, layers=["vit.layers.1"])
    plain = ng.meta_saliency(LogitsOnly(vit), x, None, lr=1e-2, layers=["model.vit.layers.1"])
    torch.testing.assert_close(meta["vit.layers.1"], plain["model.vit.layers.1"])
    assert not torch.equal(meta["vit.layers.1"], ng.normgrad(vit, x, None, layers=["vit.layers.1"])["vit.layers.1"])


def test_captum_adapter_and_baselines_on_a_model_output(vit):
    x = torch.randn(2, 3, 32, 48)
    attribution = LayerNormGrad(vit, vit.vit.layers[1]).attribute(x, target=1)
    torch.testing.assert_close(attribution, ng.normgrad(vit, x, 1, layers=["vit.layers.1"])["vit.layers.1"], rtol=0, atol=0)
    from normgrad.baselines import gradcam, integrated_gradients

    assert gradcam(vit, x, 1, layers=["vit.layers.1"])["vit.layers.1"].shape == (2, 1, 2, 3)
    assert integrated_gradients(vit, x, None)["input"].shape == (2, 1, 32, 48)


def test_a_deit_distillation_token_is_a_prefix_token():
    config = transformers.DeiTConfig(**TINY_VIT, num_labels=3)
    model = transformers.DeiTForImageClassificationWithTeacher(config).eval()
    maps = ng.normgrad(model, torch.randn(1, 3, 32, 48), None, layers=["deit.layers.0"])
    assert maps["deit.layers.0"].shape == (1, 1, 2, 3)  # 2 + 6 tokens: the class and distillation tokens have no place


def save_folder(tmp_path, model: nn.Module, processor) -> str:
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return f"hf:{tmp_path}"


def test_the_loader_reads_a_saved_classifier_offline(vit, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 48}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3])
    loaded = load(save_folder(tmp_path, vit, processor))
    assert loaded.class_names == ["cat", "dog", "bird"]
    assert loaded.preprocess.fixed_size == (32, 48)  # ViT's position embeddings take this size only
    assert loaded.preprocess.mean == pytest.approx((0.4, 0.5, 0.6)) and loaded.preprocess.std == pytest.approx((0.2, 0.25, 0.3))
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    x = loaded.preprocess(photo)[None]
    expected = processor(photo, return_tensors="pt", do_resize=True, resample=Image.Resampling.BICUBIC)["pixel_values"]
    torch.testing.assert_close(x, expected, rtol=0, atol=2e-2)  # same normalisation; resizers differ by rounding
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x).logits, vit(x).logits)
    assert loaded.default_layers() == ["vit.layers.0", "vit.layers.1"]


def test_the_loader_keeps_the_aspect_for_a_model_of_any_size(tmp_path):
    config = transformers.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=2)
    model = transformers.ConvNextForImageClassification(config).eval()
    loaded = load(save_folder(tmp_path, model, transformers.ConvNextImageProcessor(size={"shortest_edge": 64})))
    assert loaded.preprocess.fixed_size is None and loaded.preprocess.size == 64
    assert loaded.class_names == ["LABEL_0", "LABEL_1"]
    assert loaded.default_layers() == [f"convnext.encoder.stages.{i}" for i in range(4)]


def test_the_loader_builds_a_segmenter(tmp_path):
    config = transformers.SegformerConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2], num_labels=4)
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    loaded = load(save_folder(tmp_path, model, transformers.SegformerImageProcessor(size={"height": 64, "width": 64})))
    assert type(loaded.model).__name__ == "SegformerForSemanticSegmentation"
    assert loaded.preprocess.fixed_size is None
    x = torch.randn(1, 3, 64, 96)
    maps = ng.normgrad(loaded.model, x, ng.Region(1, box=(0, 0, 48, 32)), layers=loaded.default_layers(x))
    assert [m.shape[-2:] for m in maps.values()] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_random_weights_from_the_folders_config(tmp_path):
    torch.manual_seed(1)  # not the seed of weights=None
    saved = transformers.ViTForImageClassification(transformers.ViTConfig(**TINY_VIT, num_labels=3))
    loaded = load(save_folder(tmp_path, saved, transformers.ViTImageProcessor(size={"height": 32, "width": 48})), weights=None)
    assert type(loaded.model) is type(saved) and not torch.equal(loaded.model.classifier.weight, saved.classifier.weight)


@pytest.mark.parametrize(
    "setup, message",
    [
        ("missing", "does not exist; give a folder written by model.save_pretrained"),
        ("no_processor", "no preprocessor_config.json"),
        ("backbone_only", "without an image-classification or semantic-segmentation head"),
        ("bad_size", "is not {'height', 'width'}"),
    ],
)
def test_the_loader_refuses_what_it_cannot_read_in_one_line(tmp_path, setup, message):
    folder = tmp_path / "model"
    if setup != "missing":
        config = transformers.ViTConfig(**TINY_VIT)
        model = transformers.ViTModel(config) if setup == "backbone_only" else transformers.ViTForImageClassification(config)
        model.save_pretrained(folder)
        if setup != "no_processor":
            transformers.ViTImageProcessor(size={"height": 32, "width": 48}).save_pretrained(folder)
        if setup == "bad_size":
            settings = json.loads((folder / "preprocessor_config.json").read_text())
            (folder / "preprocessor_config.json").write_text(json.dumps({**settings, "size": {"longest_edge": 48}}))
    with pytest.raises(ng.NormGradError, match=message) as error:
        load(f"hf:{folder}")
    assert "\n" not in str(error.value)


def test_a_model_without_a_head_is_refused_with_what_to_use():
    model = transformers.ViTModel(transformers.ViTConfig(**TINY_VIT)).eval()
    with pytest.raises(ng.NormGradError, match=r"with its head \(AutoModelForImageClassification\) or a callable target"):
        ng.normgrad(model, torch.randn(1, 3, 32, 48), 0, layers=["layers.0"])


def test_a_saved_object_detector_is_refused_naming_what_works(tmp_path):
    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], out_features=["stage4"])
    config = transformers.DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False)
    config.architectures = ["DetrForObjectDetection"]
    config.save_pretrained(tmp_path)
    with pytest.raises(ng.NormGradError, match=r"object detector .* torchvision's detectors are supported \(--task detect\)"):
        load(f"hf:{tmp_path}")


def explain_cli(*argv) -> tuple[int, str]:
    from normgrad.cli import main

    return main([str(a) for a in argv])


def tiny_segmenter(tmp_path) -> str:
    """A saved SegFormer with three classes (sky, road, car), random weights, and a street.png of 120x80 beside it."""
    torch.manual_seed(0)
    config = transformers.SegformerConfig(
        hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2], num_labels=3,
        id2label={0: "sky", 1: "road", 2: "car"}, label2id={"sky": 0, "road": 1, "car": 2},
    )  # fmt: skip
    folder = save_folder(tmp_path / "model", transformers.SegformerForSemanticSegmentation(config).eval(),
                         transformers.SegformerImageProcessor(size={"height": 64, "width": 64}))  # fmt: skip
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(tmp_path / "street.png")
    return folder


def test_explain_a_saved_segmenter_inside_a_region(tmp_path, capsys):
    folder = tiny_segmenter(tmp_path)
    out = tmp_path / "out"
    common = ["--model", folder, "--task", "segment", "--target", "car", "--workers", 0, "--writers", 0]
    assert explain_cli("explain", tmp_path / "street.png", *common, "--region", "20,10,90,60", "--out", out) == 0
    saliency_map, mask = np.load(out / "street.npy"), np.load(out / "street_mask.npy")
    assert saliency_map.shape == mask.shape == (80, 120) and np.isfinite(saliency_map).all() and saliency_map.max() > saliency_map.min()
    assert set(np.unique(mask)) <= {0.0, 1.0}
    record = json.loads((out / "summary.json").read_text())
    assert record["settings"]["task"] == "segment" and record["settings"]["region"] == [20, 10, 90, 60]
    (image,) = record["images"]
    assert image["target"]["name"] == "car" and [output["layer"] for output in image["outputs"]] == ["combined", "mask"]
    assert (out / "street_mask.png").is_file() and (out / "index.html").is_file()
    assert explain_cli("explain", tmp_path / "street.png", *common, "--out", tmp_path / "out2") in (0, 1)  # the predicted region
    capsys.readouterr()
    assert explain_cli("explain", tmp_path / "street.png", "--model", folder, "--task", "segment", "--out", tmp_path / "o3") == 2
    assert "--task segment needs --target CLASS" in capsys.readouterr().err


def test_the_closing_line_of_a_segment_run_says_its_predictions_are_pixel_shares_at_the_size_explained(tmp_path, capsys):
    folder = tiny_segmenter(tmp_path)
    argv = ["explain", tmp_path / "street.png", "--model", folder, "--task", "segment", "--target", "car", "--region", "20,10,90,60",
            "--workers", 0, "--writers", 0, "--out", tmp_path / "out"]  # fmt: skip
    assert explain_cli(*argv) == 0
    closing = capsys.readouterr().out.splitlines()[3]
    (record,) = json.loads((tmp_path / "out" / "summary.json").read_text())["images"]
    size = "x".join(map(str, record["explained_at"]))
    assert closing.startswith("prediction and p: the class the model predicts on the most pixels and its share of them")
    assert f"at the size explained (e.g. {size})" in closing and "summed over the --region box" in closing
    assert "model's own input size" not in closing
