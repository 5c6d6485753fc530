"""The method registry, the Captum baselines, and NormGrad as a Captum layer attribution."""

import matplotlib
import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LayerAttribution, Saliency, visualization

import normgrad as ng
from conftest import SmallNet, randomize_batchnorm
from normgrad.captum import LayerNormGrad
from normgrad.registry import CAPTUM_BASELINES, get_method
from test_engine import assert_untouched, snapshot

matplotlib.use("Agg")


@pytest.fixture
def model():
    return randomize_batchnorm(SmallNet())


def test_every_registered_method_runs_and_leaves_the_model_untouched(model):
    x = torch.randn(2, 3, 20, 18)
    before = snapshot(model)
    names = [
        "normgrad",
        "selective",
        "conv3x3+max",
        "layer+norm",
        "meta",
        "adversarial:selective",
        "meta:gradcam",
        *CAPTUM_BASELINES,
        "center",
        "random",
    ]
    for name in names:
        layers = ["features.3", "features.8"] if name != "layer+norm" else ["features.3"]
        maps = get_method(name)(model, x, [1, 2], layers=layers)
        assert all(m.shape[:2] == (2, 1) and m.dtype == torch.float32 for m in maps.values()), name
    assert_untouched(model, before)


def test_gradient_baseline_is_captum_saliency_with_our_targets(model):
    x = torch.randn(2, 3, 20, 18)
    expected = Saliency(model.eval()).attribute(x.clone().requires_grad_(), target=[3, 4], abs=True).amax(1, keepdim=True)
    torch.testing.assert_close(ng.baselines.gradient(model, x, [3, 4])["input"], expected)
    # the gradient is the bias extract at the input, max over channels of |g|
    labels = torch.tensor([1, 6])
    loss_map = ng.baselines.gradient(model, x, ng.TrainingLoss(labels))["input"]
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(-F.cross_entropy(model(xr), labels, reduction="sum"), [xr])
    torch.testing.assert_close(loss_map, g.abs().amax(1, keepdim=True))
    predicted = model(x).argmax(1)
    torch.testing.assert_close(ng.baselines.gradient(model, x)["input"], ng.baselines.gradient(model, x, predicted)["input"])


def test_center_baseline_points_at_the_centre():
    maps = ng.baselines.center(None, torch.zeros(1, 3, 10, 14))["input"]
    row, col = divmod(int(maps.flatten().argmax()), 14)
    assert (row, col) in {(4, 6), (4, 7), (5, 6), (5, 7)}


def test_registry_errors():
    with pytest.raises(ng.NormGradError, match="unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(ng.NormGradError, match="unknown extract\\+aggregate 'conv9x9\\+norm'"):
        get_method("conv9x9+norm")
    with pytest.raises(ng.NormGradError, match="needs layers"):
        get_method("normgrad")(SmallNet(), torch.randn(1, 3, 20, 18))
    with pytest.raises(ng.NormGradError, match="Unit targets work with the NormGrad engine"):
        get_method("gradient")(SmallNet(), torch.randn(1, 3, 20, 18), ng.Unit("features.3", 0))


@pytest.mark.parametrize("extract, aggregate", [("conv1x1", "norm"), ("scaling", "positive_norm"), ("layer", "max"), ("conv3x3", "sum")])
def test_layer_normgrad_equals_ng_saliency(extract, aggregate):
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    layer = model.layer2[0].conv1 if extract == "layer" else model.layer2
    name = "layer2.0.conv1" if extract == "layer" else "layer2"
    attribution = LayerNormGrad(model, layer).attribute(x, target=[1, 2], extract=extract, aggregate=aggregate)
    expected = ng.saliency(model, x, [1, 2], layers=[name], extract=extract, aggregate=aggregate)[name]
    assert torch.equal(attribution, expected)
    assert isinstance(LayerNormGrad(model, layer), LayerAttribution)


def test_layer_normgrad_in_a_captum_workflow():
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    forward = lambda inputs, scale: model(inputs) * scale  # noqa: E731
    attribution = LayerNormGrad(forward, model.layer3).attribute((x,), target=4, additional_forward_args=(3.0,))
    torch.testing.assert_close(attribution, 3.0 * ng.normgrad(model, x, 4, layers="layer3")["layer3"], rtol=1e-4, atol=1e-6)
    upsampled = LayerAttribution.interpolate(attribution, (64, 64), "bilinear")
    assert upsampled.shape == (1, 1, 64, 64)
    figure, _ = visualization.visualize_image_attr(
        upsampled[0].permute(1, 2, 0).detach().numpy(),
        x[0].permute(1, 2, 0).numpy(),
        method="blended_heat_map",
        sign="absolute_value",
        use_pyplot=False,
    )
    assert figure is not None
