"""Videos and volumes (N, C, T, H, W): every extract × aggregate against its brute-force definition, on single 3-D layers."""

import pytest
import torch
from torch import nn

import brute_force
import normgrad as ng
from brute_force import aggregate_explicit, assert_engine_matches_brute_force, brute_force_map, per_location_weight_grads
from conftest import prepared

VIRTUAL = ["scaling", "conv1x1", "conv3x3", "depthwise3x3", "bias"]

CONVS = {
    "plain": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    "strided": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2),
    "dilated": dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2),
    "spatial_only": dict(in_channels=4, out_channels=6, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # R(2+1)D
    "temporal_only": dict(in_channels=4, out_channels=6, kernel_size=(3, 1, 1), padding=(1, 0, 0)),
    "anisotropic": dict(in_channels=4, out_channels=6, kernel_size=(2, 3, 4), stride=(2, 1, 2), padding=(1, 2, 0), dilation=(1, 2, 1)),
    "grouped": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2),
    "depthwise": dict(in_channels=4, out_channels=8, kernel_size=3, stride=2, padding=1, groups=4),
    "same": dict(in_channels=4, out_channels=6, kernel_size=(2, 3, 4), padding="same"),
    "replicate": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="replicate"),
    "no_bias_1x1x1": dict(in_channels=4, out_channels=6, kernel_size=1, bias=False),
}


def conv3d_model(**conv_args) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(**conv_args), nn.Tanh(), nn.Flatten(), nn.LazyLinear(5))


@pytest.mark.parametrize("aggregate", ng.AGGREGATES)
@pytest.mark.parametrize("conv", list(CONVS))
def test_conv3d_layer_extract_matches_per_location_weight_gradients(conv, aggregate):
    x = torch.randn(2, 4, 5, 6, 7)
    model = prepared(conv3d_model(**CONVS[conv]), x)
    x = x.double()
    computed = assert_engine_matches_brute_force(model, x, "0", "layer", aggregate, target=3)
    assert computed.shape == (2, 1, *model[0](x).shape[2:])


@pytest.mark.parametrize("conv", ["strided", "anisotropic", "depthwise", "same"])
def test_conv3d_layer_extract_one_location_at_a_time(conv):
    """Per-location terms from one autograd pass per location sum to torch's own Conv3d weight gradient."""
    x = torch.randn(1, 4, 4, 5, 4, dtype=torch.double)
    model = prepared(conv3d_model(**CONVS[conv]), x.float()).double()
    layer = model[0]

    def objective(y):
        return model[1:](y)[:, 2].sum()

    terms = per_location_weight_grads(layer, x, objective)
    weight_grad = torch.autograd.grad(objective(layer(x)), [layer.weight])[0]
    torch.testing.assert_close(terms.sum((0, 1, 2)), weight_grad)
    for aggregate in ng.AGGREGATES:
        maps = ng.saliency(model, x, target=2, layers=["0"], extract="layer", aggregate=aggregate)
        expected = aggregate_explicit(terms[None], aggregate, grid_dims=3)
        torch.testing.assert_close(maps["0"], expected.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aggregate", ng.AGGREGATES)
@pytest.mark.parametrize("extract", VIRTUAL)
@pytest.mark.parametrize("layer", ["input", "0", "1"])
def test_virtual_extracts_are_3d_outer_products(extract, aggregate, layer):
    """conv3x3 and depthwise3x3 are 3×3×3 virtual layers on a volume (zero padding on every axis)."""
    x = torch.randn(2, 3, 4, 5, 6)
    model = prepared(conv3d_model(in_channels=3, out_channels=5, kernel_size=3, padding=1), x)
    computed = assert_engine_matches_brute_force(model, x.double(), layer, extract, aggregate, target=[1, 4])
    assert computed.shape == (2, 1, 4, 5, 6)


class VideoTokens(nn.Module):
    """A tiny video transformer: 3-D patches → class token + t·h·w tokens → Linear → class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv3d(3, 6, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.cls_token = nn.Parameter(torch.randn(1, 1, 6))
        self.mlp = nn.Linear(6, 7)
        self.act = nn.Tanh()
        self.head = nn.Linear(7, 4)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], 1)
        return self.head(self.act(self.mlp(tokens)).mean(1))


class ChannelsLast(nn.Module):
    """Conv3d, then a Linear on channels-last (N, T, H, W, C) features, as Swin3D's MLPs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 5, 3, padding=1)
        self.mlp = nn.Linear(5, 6)
        self.act = nn.Tanh()
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.act(self.mlp(self.conv(x).permute(0, 2, 3, 4, 1))).mean((1, 2, 3)))


@pytest.mark.parametrize("extract", VIRTUAL + ["layer"])
def test_tokens_on_a_video_grid(monkeypatch, extract):
    """Tokens 1 + t·h·w (time slowest) read on the t × h × w grid; the class token has no position."""
    monkeypatch.setattr(brute_force, "PREFIX_TOKENS", 1)
    monkeypatch.setattr(brute_force, "GRID", (2, 3, 5))
    model = VideoTokens().double().eval()
    x = torch.randn(2, 3, 4, 12, 20, dtype=torch.double)
    for aggregate in ng.AGGREGATES:
        maps = ng.saliency(
            model, x, target=1, layers=["mlp", "act"] if extract != "layer" else ["mlp"], extract=extract, aggregate=aggregate
        )
        for layer, saliency_map in maps.items():
            assert saliency_map.shape == (2, 1, 2, 3, 5)
            expected = brute_force_map(model, x, layer, extract, aggregate, target=1)
            torch.testing.assert_close(saliency_map, expected.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extract", VIRTUAL + ["layer"])
def test_channels_last_volumes(monkeypatch, extract):
    monkeypatch.setattr(brute_force, "CHANNELS_LAST", True)
    model = ChannelsLast().double().eval()
    x = torch.randn(2, 3, 3, 4, 6, dtype=torch.double)
    for aggregate in ng.AGGREGATES:
        maps = ng.saliency(model, x, target=2, layers=["mlp"], extract=extract, aggregate=aggregate)
        assert maps["mlp"].shape == (2, 1, 3, 4, 6)
        expected = brute_force_map(model, x, "mlp", extract, aggregate, target=2)
        torch.testing.assert_close(maps["mlp"], expected.float(), rtol=1e-5, atol=1e-6)


def test_float32_precision_on_volumes():
    x = torch.randn(2, 4, 5, 6, 7)
    model = prepared(conv3d_model(**CONVS["grouped"]), x).float()
    for extract in VIRTUAL + ["layer"]:
        for aggregate in ng.AGGREGATES:
            maps = ng.saliency(model, x, target=0, layers=["0"], extract=extract, aggregate=aggregate)["0"]
            expected = brute_force_map(model.double(), x.double(), "0", extract, aggregate, target=0).float()
            model.float()
            assert maps.dtype == torch.float32
            torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("chunk", [50, 400])  # 50: rows of one frame at a time; 400: runs of samples
def test_chunked_reductions_on_volumes(monkeypatch, chunk):
    from normgrad.formulas import aggregate as aggregate_module

    monkeypatch.setattr(aggregate_module, "CHUNK_ELEMENTS", chunk)
    x = torch.randn(3, 3, 4, 5, 6)
    model = prepared(conv3d_model(in_channels=3, out_channels=5, kernel_size=3, padding=1), x)
    x = x.double()
    for extract in VIRTUAL:
        for aggregate in ng.AGGREGATES:
            maps = ng.saliency(model, x, target=[1, 4, 0], layers=["input", "1"], extract=extract, aggregate=aggregate)
            for layer in ("input", "1"):
                expected = brute_force_map(model, x, layer, extract, aggregate, target=[1, 4, 0])
                torch.testing.assert_close(maps[layer], expected.float(), rtol=1e-5, atol=1e-6)
