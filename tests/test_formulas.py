"""Every extract × aggregate against its brute-force definition, on single layers."""

import pytest
import torch
from torch import nn

import normgrad as ng
from brute_force import aggregate_explicit, assert_engine_matches_brute_force, brute_force_map, per_location_weight_grads
from conftest import prepared

VIRTUAL = ["scaling", "conv1x1", "conv3x3", "depthwise3x3", "bias"]

CONVS = {
    "plain": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    "strided": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2),
    "dilated": dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2),
    "rect_padded": dict(in_channels=4, out_channels=6, kernel_size=(3, 5), stride=(2, 1), padding=(2, 1)),
    "grouped": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2),
    "depthwise": dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4),
    "depthwise_multiplier": dict(in_channels=4, out_channels=8, kernel_size=5, stride=2, padding=2, groups=4),
    "same": dict(in_channels=4, out_channels=6, kernel_size=4, padding="same"),
    "reflect": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"),
    "circular": dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, padding_mode="circular", dilation=2),
    "no_bias_1x1": dict(in_channels=4, out_channels=6, kernel_size=1, bias=False),
}


def conv_model(**conv_args) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(**conv_args), nn.Tanh(), nn.Flatten(), nn.LazyLinear(5))


@pytest.mark.parametrize("aggregate", ng.AGGREGATES)
@pytest.mark.parametrize("conv", list(CONVS))
def test_layer_extract_matches_per_location_weight_gradients(conv, aggregate):
    x = torch.randn(2, 4, 9, 10)
    model = prepared(conv_model(**CONVS[conv]), x)
    assert_engine_matches_brute_force(model, x.double(), "0", "layer", aggregate, target=3)


@pytest.mark.parametrize("conv", ["strided", "dilated", "grouped", "depthwise_multiplier", "same", "reflect"])
def test_layer_extract_one_location_at_a_time(conv):
    """Per-location terms from one autograd pass per location sum to torch's own weight gradient."""
    x = torch.randn(1, 4, 8, 7, dtype=torch.double)
    model = prepared(conv_model(**CONVS[conv]), x.float()).double()
    layer = model[0]

    def objective(y):
        return model[1:](y)[:, 2].sum()

    terms = per_location_weight_grads(layer, x, objective)
    weight_grad = torch.autograd.grad(objective(layer(x)), [layer.weight])[0]
    torch.testing.assert_close(terms.sum((0, 1)), weight_grad)
    for aggregate in ng.AGGREGATES:
        maps = ng.saliency(model, x, target=2, layers=["0"], extract="layer", aggregate=aggregate)
        expected = aggregate_explicit(terms[None], aggregate)
        torch.testing.assert_close(maps["0"], expected.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aggregate", ng.AGGREGATES)
@pytest.mark.parametrize("extract", VIRTUAL)
@pytest.mark.parametrize("layer", ["input", "0", "1"])
def test_virtual_extracts_match_explicit_outer_products(extract, aggregate, layer):
    x = torch.randn(2, 3, 7, 6)
    model = prepared(conv_model(in_channels=3, out_channels=5, kernel_size=3, padding=1), x)
    assert_engine_matches_brute_force(model, x.double(), layer, extract, aggregate, target=[1, 4])


@pytest.mark.parametrize("aggregate", ng.AGGREGATES)
@pytest.mark.parametrize("extract", VIRTUAL + ["layer"])
def test_linear_and_vector_activations(extract, aggregate):
    """A linear layer on (N, C) vectors is a 1×1 conv at a single location."""
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    x = torch.randn(3, 6, dtype=torch.double)
    wrapped = nn.Sequential(nn.Flatten(), *model).double()
    image = x[:, :, None, None]
    maps = ng.saliency(wrapped, image, target=1, layers=["1", "3"], extract=extract, aggregate=aggregate)
    for layer in ["1", "3"]:
        assert maps[layer].shape == (3, 1, 1, 1)
        expected = brute_force_map(wrapped, image, layer, extract, aggregate, target=1)
        torch.testing.assert_close(maps[layer], expected.float(), rtol=1e-5, atol=1e-6)


def test_float32_precision():
    """In float32 the closed forms agree with the float64 brute force to float32 precision."""
    x = torch.randn(2, 4, 9, 10)
    model = prepared(conv_model(**CONVS["grouped"]), x).float()
    for extract in VIRTUAL + ["layer"]:
        for aggregate in ng.AGGREGATES:
            maps = ng.saliency(model, x, target=0, layers=["0"], extract=extract, aggregate=aggregate)["0"]
            expected = brute_force_map(model.double(), x.double(), "0", extract, aggregate, target=0).float()
            model.float()
            assert maps.dtype == torch.float32
            torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("chunk", [40, 260])  # 40: rows of one sample; 260: runs of samples (batch 3 of 126 / 210 values)
def test_chunked_reductions_match_the_brute_force(monkeypatch, chunk):
    """Statistics reduced slice by slice (large activations) are those of the whole tensor, for every extract × aggregate."""
    from normgrad.formulas import aggregate as aggregate_module

    x = torch.randn(3, 3, 7, 6)
    model = prepared(conv_model(in_channels=3, out_channels=5, kernel_size=3, padding=1, groups=1), x)
    x = x.double()
    whole = {(e, a): ng.saliency(model, x, target=[1, 4, 0], layers=["input", "0", "1"], extract=e, aggregate=a)
             for e in VIRTUAL for a in ng.AGGREGATES}  # fmt: skip
    monkeypatch.setattr(aggregate_module, "CHUNK_ELEMENTS", chunk)
    for extract in VIRTUAL + ["layer"]:
        for aggregate in ng.AGGREGATES:
            layers = ["0"] if extract == "layer" else ["input", "0", "1"]
            maps = ng.saliency(model, x, target=[1, 4, 0], layers=layers, extract=extract, aggregate=aggregate)
            for layer in layers:
                expected = brute_force_map(model, x, layer, extract, aggregate, target=[1, 4, 0])
                torch.testing.assert_close(maps[layer], expected.float(), rtol=1e-5, atol=1e-6)
                if extract != "layer":
                    torch.testing.assert_close(maps[layer], whole[(extract, aggregate)][layer], rtol=1e-6, atol=1e-7)


def test_by_chunks_splits_samples_or_rows_and_concatenates_tuples(monkeypatch):
    from normgrad.formulas import aggregate as aggregate_module

    calls = []

    def stats(v, s):
        calls.append(tuple(v.shape))
        return (v * s).sum(1), (v * s).amax(1)

    cases = (  # batch, chunk, the slices: runs of samples, or rows when one sample (108 values) is larger than a chunk
        (5, 300, [(2, 4, 9, 3), (2, 4, 9, 3), (1, 4, 9, 3)]),
        (2, 50, [(2, 4, 2, 3)] * 4 + [(2, 4, 1, 3)]),
    )
    for batch, chunk, shapes in cases:
        values, scale = torch.randn(batch, 4, 9, 3), torch.randn(batch, 4, 9, 3)
        expected = stats(values, scale)
        monkeypatch.setattr(aggregate_module, "CHUNK_ELEMENTS", chunk)
        calls.clear()
        result = aggregate_module.by_chunks(stats, values, scale)
        assert calls == shapes
        assert all(torch.equal(r, e) for r, e in zip(result, expected, strict=True))


def test_by_chunks_leaves_other_devices_whole(monkeypatch):
    """Only CPU tensors are sliced (a caching allocator, as CUDA's, has no page faults to avoid, only launches to add)."""
    from normgrad.formulas import aggregate as aggregate_module

    monkeypatch.setattr(aggregate_module, "CHUNK_ELEMENTS", 10)
    calls = []
    values = torch.empty(4, 3, 5, 5, device="meta")
    aggregate_module.by_chunks(lambda v: calls.append(tuple(v.shape)) or v.sum(1), values)
    assert calls == [(4, 3, 5, 5)]


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


# (activation scale A, gradient scale B): the true map is about A·B, from 1e-35 to 1e35, all inside float32's range
EXTREMES = {
    "huge activation": (1e25, 1.0),
    "tiny activation": (1e-25, 1.0),
    "huge gradient": (1.0, 1e25),
    "tiny gradient": (1.0, 1e-25),
    "both huge": (1e20, 1e15),
    "both tiny": (1e-20, 1e-15),
    "huge and tiny": (1e30, 1e-28),
}


@pytest.mark.parametrize("aggregate", ["norm", "positive_norm"])  # the aggregates with a closed form sqrt(Σp²·Σq²)
@pytest.mark.parametrize("extract", VIRTUAL + ["layer"])
@pytest.mark.parametrize("extreme", list(EXTREMES))
def test_maps_are_finite_and_exact_wherever_the_true_value_is_a_float32(extreme, extract, aggregate):
    """No over- or underflow of Σg²·Σa² inside float32's range: the float32 maps match the float64 brute force."""
    activation_scale, gradient_scale = EXTREMES[extreme]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        Scale(activation_scale),
        nn.Conv2d(4, 5, 3, padding=1),
        Scale(gradient_scale),
        nn.Flatten(),
        nn.Linear(5 * 36, 3),
    ).eval()
    x = torch.randn(2, 3, 6, 6)
    layer = "2" if extract == "layer" else "1"  # the layer extract reads the scaled input of conv 2
    maps = ng.saliency(model, x, target=[0, 2], layers=[layer], extract=extract, aggregate=aggregate)[layer]
    expected = brute_force_map(model.double(), x.double(), layer, extract, aggregate, target=[0, 2])
    model.float()
    assert torch.isfinite(maps).all() and maps.abs().amax() > 0
    scale = expected.abs().amax().item()
    torch.testing.assert_close(maps.double(), expected, rtol=1e-4, atol=1e-5 * scale)
