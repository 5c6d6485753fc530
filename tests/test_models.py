"""Every extract × aggregate at real network points, against the brute force.

The brute force inserts the virtual (or per-location real) layer with a
forward hook and differentiates with respect to its per-location weights.
"""

import torch
import torchvision
from torch import nn

import normgrad as ng
from brute_force import brute_force_map
from conftest import SmallNet, randomize_batchnorm

VIRTUAL = ["scaling", "conv1x1", "conv3x3", "depthwise3x3", "bias"]


def check_all(model, x, virtual_layers, weight_layers, target=None):
    model = model.double().eval()
    x = x.double()
    for aggregate in ng.AGGREGATES:
        for extract in VIRTUAL:
            maps = ng.saliency(model, x, target, layers=virtual_layers, extract=extract, aggregate=aggregate)
            assert list(maps) == list(virtual_layers)
            for layer in virtual_layers:
                expected = brute_force_map(model, x, layer, extract, aggregate, target)
                torch.testing.assert_close(maps[layer], expected.float(), rtol=1e-5, atol=1e-6, msg=f"{layer} {extract} {aggregate}")
        maps = ng.saliency(model, x, target, layers=weight_layers, extract="layer", aggregate=aggregate)
        for layer in weight_layers:
            expected = brute_force_map(model, x, layer, "layer", aggregate, target)
            torch.testing.assert_close(maps[layer], expected.float(), rtol=1e-5, atol=1e-6, msg=f"{layer} layer {aggregate}")


def test_small_net_bn_pooling_residual_inplace(small_net):
    virtual = ["input", "features.0", "features.1", "features.2", "features.4", "features.6", "features.7.bn2", "features.7", "features.9"]
    weight = ["features.0", "features.3", "features.5", "features.7.conv1", "features.8", "classifier"]
    check_all(small_net, torch.randn(2, 3, 20, 18), virtual, weight, target=[3, 5])


def test_resnet18():
    model = randomize_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10))
    check_all(
        model,
        torch.randn(2, 3, 48, 48),
        ["conv1", "layer1.0.bn2", "layer2", "layer4"],
        ["conv1", "layer2.0.conv1", "layer2.0.downsample.0", "fc"],
    )


def test_mobilenet_v3_depthwise():
    model = randomize_batchnorm(torchvision.models.mobilenet_v3_small(weights=None, num_classes=10))
    depthwise = model.features[1].block[0][0]
    assert depthwise.groups == depthwise.in_channels > 1
    check_all(
        model,
        torch.randn(2, 3, 40, 40),
        ["features.1", "features.2.block.1", "features.4"],
        ["features.1.block.0.0", "features.4.block.1.0", "features.6.block.2.fc1"],
        target=7,
    )


class TinyTransformer(nn.Module):
    """Patch embedding to (N, T, C) tokens, a token MLP, mean pooling, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = tokens + self.mlp(self.norm(tokens))
        return self.head(tokens.mean(1))


def test_tokens_are_laid_on_their_grid():
    model = TinyTransformer()
    x = torch.randn(2, 3, 16, 16)
    maps = ng.normgrad(model, x, layers=["norm", "mlp.0"])
    assert maps["norm"].shape == (2, 1, 4, 4)
    check_all(model, x, ["norm", "mlp.1"], ["mlp.0", "mlp.2"], target=1)


def test_inplace_relu_gives_the_same_maps_as_out_of_place():
    """A conv followed by ReLU(inplace=True): maps at the conv output equal the non-in-place model's."""
    inplace, plain = SmallNet(inplace=True), SmallNet(inplace=False)
    plain.load_state_dict(inplace.state_dict())
    x = torch.randn(2, 3, 20, 18)
    layers = ["features.0", "features.1", "features.3", "features.8", "features.7.bn2"]
    for extract in VIRTUAL:
        for aggregate in ng.AGGREGATES:
            a = ng.saliency(inplace, x, layers=layers, extract=extract, aggregate=aggregate)
            b = ng.saliency(plain, x, layers=layers, extract=extract, aggregate=aggregate)
            for layer in layers:
                torch.testing.assert_close(a[layer], b[layer])
    vgg_like = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.LazyLinear(3)
    )
    vgg_like(x)
    expected = brute_force_map(vgg_like.double(), x.double(), "0", "conv1x1", "sum")
    torch.testing.assert_close(ng.saliency(vgg_like, x.double(), layers="0", aggregate="sum")["0"], expected.float())


class TinyViT(TinyTransformer):
    """As TinyTransformer, with a class token first (T = 1 + 4²), pooled from the class token as ViTs do."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.mlp(self.norm(tokens))
        return self.head(tokens[:, 0] + tokens[:, 1:].mean(1))


def test_class_token_is_left_out_of_the_grid(monkeypatch):
    import brute_force

    monkeypatch.setattr(brute_force, "PREFIX_TOKENS", 1)
    model = TinyViT()
    x = torch.randn(2, 3, 16, 16)
    assert ng.normgrad(model, x, layers=["norm"])["norm"].shape == (2, 1, 4, 4)
    check_all(model, x, ["norm", "mlp.1"], ["mlp.0", "mlp.2"], target=3)


def test_random_weights_are_the_same_in_every_load_and_leave_the_callers_random_state():
    """weights=None twice: identical models (a resumed run explains with the same model); torch's RNG as it was."""
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first, second = (ng.models.load("torchvision:resnet18", weights=None) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))
    assert torch.equal(torch.rand(3), expected)
