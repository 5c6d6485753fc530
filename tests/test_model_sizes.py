"""Input sizes: fixed-size models get exactly their size (squashed, never padded or cropped), maps come back exactly."""

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image

import normgrad as ng
from normgrad import models


def photo(width: int = 300, height: int = 200) -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8))


def test_fixed_size_timm_model_takes_a_non_square_photo():
    loaded = models.load("timm:vit_tiny_patch16_224", weights=None)
    assert loaded.preprocess.fixed_size == (224, 224)
    x = loaded.preprocess(photo())[None]
    assert x.shape == (1, 3, 224, 224)
    layers = loaded.default_layers()
    assert layers == ["blocks.2", "blocks.5", "blocks.8", "blocks.10"]  # evenly spaced; the last block's patches reach nothing
    maps = ng.normgrad(loaded.model, x, layers=layers)
    assert all(m.shape == (1, 1, 14, 14) for m in maps.values())
    assert loaded.preprocess.to_original(maps["blocks.2"], 300, 200).shape == (1, 1, 200, 300)


def test_timm_sizes_follow_the_data_config_and_dynamic_sizes():
    dynamic = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True)
    assert models.timm_preprocess(dynamic).fixed_size is None  # takes any size: the aspect ratio is kept
    assert models.timm_preprocess(timm.create_model("resnet18", pretrained=False)).fixed_size is None
    swin = models.timm_preprocess(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False))
    assert swin.fixed_size == (224, 224)


def test_torchvision_sizes():
    vit = torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8)
    assert models._torchvision_preprocess(torchvision, "vit_b_16", vit).fixed_size == (64, 64)  # its own image_size
    inception = models.load("torchvision:inception_v3", weights=None)
    assert inception.preprocess.size == 299 and inception.preprocess.fixed_size is None  # the weights' crop size
    maxvit = models._torchvision_preprocess(torchvision, "maxvit_t", torchvision.models.maxvit_t())
    assert maxvit.fixed_size == (224, 224)
    segmentation = models.load("torchvision:lraspp_mobilenet_v3_large", weights=None, num_classes=3)  # no backbone download
    assert segmentation.model(torch.zeros(1, 3, 64, 64))["out"].shape == (1, 3, 64, 64)


@pytest.mark.parametrize("preprocess", [models.Preprocess(size=32), models.Preprocess(size=32, fixed_size=(32, 32))])
def test_maps_come_back_with_exact_geometry(preprocess):
    """A feature at a point of the original lands, after preprocessing and back, at the same point (both rules are axis scalings)."""
    width, height = 90, 60
    input_height, input_width = preprocess.input_size(width, height)
    scale_y, scale_x = input_height / height, input_width / width
    original_point = (21.0, 57.0)  # (row, col) in original pixel coordinates (pixel centres)
    row, col = (original_point[0] + 0.5) * scale_y - 0.5, (original_point[1] + 0.5) * scale_x - 0.5
    rows = torch.arange(input_height, dtype=torch.float64)[:, None]
    cols = torch.arange(input_width, dtype=torch.float64)[None, :]
    saliency_map = (-((rows - row) ** 2 + (cols - col) ** 2) / 8.0).exp()[None, None].float()
    back = preprocess.to_original(saliency_map, width, height)[0, 0]
    peak = np.unravel_index(int(back.argmax()), back.shape)
    assert abs(peak[0] - original_point[0]) <= 1 and abs(peak[1] - original_point[1]) <= 1
    torch.testing.assert_close(back, ng.images.to_original_size(saliency_map, width, height)[0, 0])
