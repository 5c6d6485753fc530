"""What normgrad does not explain yet is said as such: the family, what is supported, and the command line's own words."""

import pytest
import torch
import torchvision
from torch import nn

import normgrad as ng
from conftest import SmallNet


@pytest.mark.parametrize(
    "arch, words",
    [("r3d_18", "video classifier"), ("mvit_v2_s", "video classifier"), ("s3d", "video classifier"),
     ("fasterrcnn_resnet50_fpn", "object detector"), ("retinanet_resnet50_fpn", "object detector"),
     ("raft_small", "optical-flow model"), ("quantized_resnet18", "quantized model")],
)  # fmt: skip
def test_torchvision_models_of_other_families_are_named_as_such(arch, words):
    with pytest.raises(ng.NormGradError) as error:
        ng.models.load(f"torchvision:{arch}", weights=None)
    message = str(error.value)
    assert words in message and "unknown" not in message and "image classifiers and segmentation models" in message


def test_a_misspelt_torchvision_model_is_still_unknown():
    with pytest.raises(ng.NormGradError, match="unknown torchvision model 'resnet5'"):
        ng.models.load("torchvision:resnet5", weights=None)


@pytest.mark.parametrize("call", [ng.normgrad, ng.normgrad_selective, ng.meta_saliency])
@pytest.mark.parametrize("shape", [(1, 3, 4, 16, 16), (2, 1, 8, 8, 8)])
def test_a_5d_input_gets_the_video_and_volume_message(call, shape):
    with pytest.raises(ng.NormGradError, match=r"5-D tensor .* a video clip or a volume \(N, C, T, H, W\)"):
        call(SmallNet(), torch.randn(shape), layers=["features.3"])


class Resizing(nn.Module):
    """A stand-in for torchvision's detectors: a transform that resizes the input inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.transform = type("GeneralizedRCNNTransform", (nn.Module,), {"forward": lambda self, x: nn.functional.interpolate(x, 32)})()
        self.net = SmallNet()

    def forward(self, x):
        return self.net(self.transform(x))


@pytest.mark.parametrize("model", [Resizing, lambda: torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
    weights=None, weights_backbone=None, num_classes=3)])  # fmt: skip
def test_a_model_that_resizes_its_input_is_refused_saying_so(model):
    with pytest.raises(ng.NormGradError, match="resizes its input internally"):
        ng.normgrad(model().eval(), torch.randn(1, 3, 40, 48), layers=["input"])


def test_methods_that_need_layers_name_the_flag():
    from normgrad.registry import get_method

    with pytest.raises(ng.NormGradError, match="needs layers: name layers with --layers"):
        get_method("gradcam")(SmallNet(), torch.randn(1, 3, 20, 18))
