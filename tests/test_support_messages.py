"""What normgrad does not explain yet is said as such: the family, what is supported, and the command line's own words."""

import pytest
import torch

import normgrad as ng
from conftest import SmallNet


@pytest.mark.parametrize(
    "arch, words",
    [("raft_small", "optical-flow model"), ("raft_large", "optical-flow model"), ("quantized_resnet18", "quantized model")],
)  # fmt: skip
def test_torchvision_models_of_other_families_are_named_as_such(arch, words):
    with pytest.raises(ng.NormGradError) as error:
        ng.models.load(f"torchvision:{arch}", weights=None)
    message = str(error.value)
    assert words in message and "unknown" not in message and "image classifiers, segmentation models, detectors and video models" in message


def test_a_misspelt_torchvision_model_is_still_unknown():
    with pytest.raises(ng.NormGradError, match="unknown torchvision model 'resnet5'"):
        ng.models.load("torchvision:resnet5", weights=None)


@pytest.mark.parametrize("arch", ["r3d_18", "fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_video_and_detection_models_load_by_name(arch):
    loaded = ng.models.load(f"torchvision:{arch}", weights=None)
    assert loaded.name == f"torchvision:{arch}"


def test_methods_that_need_layers_name_the_flag():
    from normgrad.registry import get_method

    with pytest.raises(ng.NormGradError, match="needs layers: name layers with --layers"):
        get_method("gradcam")(SmallNet(), torch.randn(1, 3, 20, 18))
