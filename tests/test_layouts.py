"""Activation layouts: decided from evidence, the same for every extract and target, and refused when unknown."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import brute_force
import normgrad as ng
from normgrad.engine.layouts import Evidence, LayoutError, decide_layout, grid_fit, token_grid
from normgrad.formulas.layout import Layout
from test_models import check_all


class Custom(nn.Module):  # a module whose type says nothing about its layout
    def forward(self, x):
        return x


def evidence(height=64, width=96, batch=2, prefix=0, family=None):
    return Evidence((height, width), batch, prefix, family)


@pytest.mark.parametrize(
    "shape, module, expected",
    [
        ((2, 8, 16, 24), nn.Conv2d(3, 8, 3), Layout("nchw", (16, 24))),
        ((2, 16, 24, 8), nn.Linear(4, 8), Layout("nhwc", (16, 24))),
        ((2, 16, 24, 8), nn.LayerNorm(8), Layout("nhwc", (16, 24))),
        ((2, 8, 16, 24), Custom(), Layout("nchw", (16, 24))),  # (16, 8) is not a grid of 64×96: only one reading fits
        ((2, 16, 24, 96), Custom(), Layout("nhwc", (16, 24))),
        ((2, 24, 32), nn.Linear(4, 32), Layout("tokens", (4, 6))),
        ((2, 96, 32), Custom(), Layout("tokens", (8, 12))),
        ((2, 8, 96), nn.Conv1d(8, 8, 1), Layout("flat", (8, 12))),
        ((2, 8, 96), nn.Flatten(2), Layout("flat", (8, 12))),
        ((2, 7), nn.Linear(4, 7), Layout("vector")),
    ],
)
def test_layouts_from_module_types_and_the_grid(shape, module, expected):
    assert decide_layout(shape, module, evidence(), "x") == expected


def test_prefix_tokens_declared_by_the_model():
    class ViTLike(nn.Module):
        def __init__(self, cls=1, registers=0):
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, cls, 8))
            if registers:
                self.reg_token = nn.Parameter(torch.zeros(1, registers, 8))

    x = torch.zeros(2, 3, 64, 96)
    assert decide_layout((2, 1 + 24, 8), Custom(), Evidence.of(ViTLike(), x), "x") == Layout("tokens", (4, 6), 1)
    with_registers = Evidence.of(ViTLike(1, 4), x)
    assert with_registers.prefix_tokens == 5 and with_registers.family == "last"
    assert decide_layout((2, 5 + 24, 8), Custom(), with_registers, "x") == Layout("tokens", (4, 6), 5)
    assert decide_layout((2, 24, 8), Custom(), with_registers, "x") == Layout("tokens", (4, 6), 0)  # after the prefix is dropped
    timm_style = nn.Module()
    timm_style.num_prefix_tokens = 2  # timm's declaration (DeiT distilled: class + distillation)
    assert decide_layout((2, 2 + 24, 8), Custom(), Evidence.of(timm_style, x), "x") == Layout("tokens", (4, 6), 2)


def test_grids_of_non_square_inputs():
    assert grid_fit(4, 6, 64, 96) and not grid_fit(6, 4, 64, 96)
    assert token_grid(24, 64, 96) == (4, 6)
    assert token_grid(6, 128, 160) == (2, 3)  # 3×2 fits at stride 54 too; the input's aspect decides
    assert token_grid(6, 96, 96) is None  # 2×3 and 3×2 fit a square input equally: no grid
    assert grid_fit(71, 71, 299, 299, lenient=True) and not grid_fit(71, 71, 299, 299)  # Inception v3's unpadded convs


@pytest.mark.parametrize(
    "shape, module, message",
    [
        ((8, 49, 32), nn.Linear(4, 32), "folds windows, heads or patches"),
        ((2, 3, 1, 16, 24), Custom(), "5-D"),
        (
            (2, 25, 32),
            nn.Linear(4, 32),
            "25 tokens are not a grid of the 64×96 input.*num_prefix_tokens",
        ),  # 25 tokens are no grid of 64×96 and no prefix is declared
        ((2, 8, 100), nn.Conv1d(8, 8, 1), "1-D model"),
        ((2, 5, 50, 3), Custom(), "not a grid of the 64×96 input"),
    ],
)
def test_no_layout_is_an_error_that_says_why(shape, module, message):
    with pytest.raises(LayoutError, match=message):
        decide_layout(shape, module, evidence(), "layer 'x'")


def test_a_tie_uses_the_family_and_is_an_error_without_one():
    shape = (2, 8, 8, 8)  # 8×8 is the 64×64 grid at stride 8 whichever dimension holds the channels
    with pytest.raises(LayoutError, match="both as .* and as .* a Custom does not tell which"):
        decide_layout(shape, Custom(), evidence(64, 64), "x")
    assert decide_layout(shape, Custom(), evidence(64, 64, family="first"), "x").kind == "nchw"
    assert decide_layout(shape, Custom(), evidence(64, 64, family="last"), "x").kind == "nhwc"
    assert decide_layout(shape, nn.Conv2d(8, 8, 1), evidence(64, 64), "x").kind == "nchw"  # the module type settles it


class TinySwin(nn.Module):
    """Patch embedding, then channels-last (N, H, W, C) LayerNorm and MLP, as Swin and ConvNeXt blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 4, stride=4)
        self.norm = nn.LayerNorm(6)
        self.mlp = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6))
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        tokens = self.embed(x).permute(0, 2, 3, 1)
        tokens = tokens + self.mlp(self.norm(tokens))
        return self.head(tokens.mean((1, 2)))


@pytest.fixture
def channels_last(monkeypatch):
    monkeypatch.setattr(brute_force, "CHANNELS_LAST", True)


def test_channels_last_maps_against_the_brute_force(channels_last):
    model = TinySwin()
    x = torch.randn(2, 3, 16, 24)
    maps = ng.normgrad(model, x, layers=["norm", "mlp.1", "mlp.2"])
    assert all(m.shape == (2, 1, 4, 6) for m in maps.values())
    check_all(model, x, ["norm", "mlp.1"], ["mlp.0", "mlp.2"], target=1)


class TinyDeiT(nn.Module):
    """Class and distillation tokens before a non-square 4×6 patch grid."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.dist_token = nn.Parameter(torch.randn(1, 1, 8))
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        prefix = torch.cat([self.cls_token, self.dist_token], 1).expand(x.shape[0], -1, -1)
        tokens = torch.cat([prefix, tokens], dim=1)
        tokens = tokens + self.mlp(self.norm(tokens))
        return self.head(tokens[:, 0] + tokens[:, 1] + tokens[:, 2:].mean(1))


def test_prefix_tokens_on_a_non_square_grid_against_the_brute_force(monkeypatch):
    monkeypatch.setattr(brute_force, "PREFIX_TOKENS", 2)
    monkeypatch.setattr(brute_force, "GRID", (4, 6))
    model = TinyDeiT()
    x = torch.randn(2, 3, 16, 24)
    assert ng.normgrad(model, x, layers=["norm"])["norm"].shape == (2, 1, 4, 6)
    check_all(model, x, ["norm", "mlp.1"], ["mlp.0", "mlp.2"], target=3)


@pytest.mark.parametrize("model_class, layer", [(TinySwin, "mlp.1"), (TinyDeiT, "mlp.1")])
def test_unit_targets_read_the_same_layout(model_class, layer):
    """Unit(layer, c, (row, col)) is the activation at channel c and grid position (row, col), whatever the layout."""
    model = model_class()
    x = torch.randn(2, 3, 16, 24)
    store = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: store.update(o=o))
    try:
        xr = x.clone().requires_grad_()
        model(xr)
    finally:
        handle.remove()
    out = store["o"]
    value = out[:, 2, 5, 3] if out.dim() == 4 else out[:, 2 + 2 * 6 + 5, 3]  # row 2, col 5, channel 3
    (g,) = torch.autograd.grad(value.sum(), [xr])
    got = ng.saliency(model, x, ng.Unit(layer, 3, (2, 5)), layers="input", extract="bias", aggregate="sum")["input"]
    torch.testing.assert_close(got, g.sum(1, keepdim=True), rtol=1e-4, atol=1e-7)


class Windowed(nn.Module):
    """A Swin-like block: (N, H, W, C) → windows (N·4, 4, C) for a Linear, then back to the image grid."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.block = nn.Sequential(Partition(), nn.Linear(8, 8), Merge())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.block(self.embed(x)).mean((2, 3)))


class Partition(nn.Module):
    def forward(self, x):  # (N, C, 4, 4) → (N·4, 4, C): 2×2 windows
        n, c = x.shape[:2]
        return x.view(n, c, 2, 2, 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(n * 4, 4, c)


class Merge(nn.Module):
    def forward(self, windows):
        n, c = windows.shape[0] // 4, windows.shape[2]
        return windows.reshape(n, 2, 2, 2, 2, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, 4, 4)


def test_window_partitioned_layers_are_refused_naming_one_on_the_grid():
    model = Windowed()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ng.NormGradError, match=r"\(8, 4, 8\) for a batch of 2: its first dimension folds.*for example 'block'"):
        ng.normgrad(model, x, layers=["block.1"])
    with pytest.warns(UserWarning, match=r"block.1: .*folds windows"):
        maps = ng.normgrad(model, x, layers=nn.Linear)  # by type: the windowed Linear is skipped, the head kept
    assert list(maps) == ["head"]
    assert ng.normgrad(model, x, layers="block")["block"].shape == (2, 1, 4, 4)


def test_type_selection_is_a_union_and_skips_modules_that_never_run():
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
            self.aux = nn.Conv2d(4, 4, 1)  # an auxiliary head that eval mode does not run

        def forward(self, x):
            return self.trunk(x)

    model = WithAux()
    x = torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match="aux: never runs"):
        maps = ng.normgrad(model, x, layers=[nn.Conv2d, nn.LSTM])
    assert list(maps) == ["trunk.0"]
    with pytest.raises(ng.NormGradError, match="'aux' never ran"):
        ng.normgrad(model, x, layers=["trunk.0", "aux"])  # named: an error
    with pytest.raises(ng.NormGradError, match="no layer of the model matches modules of type LSTM or modules of type GRU"):
        ng.normgrad(model, x, layers=[nn.LSTM, nn.GRU])
    attention = nn.MultiheadAttention(4, 1, batch_first=True)  # its out_proj runs through F.linear, not the module
    tokens = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.Flatten(2))

    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens, self.attention, self.head = tokens, attention, nn.Linear(4, 3)

        def forward(self, x):
            t = self.tokens(x).transpose(1, 2)
            return self.head(self.attention(t, t, t)[0].mean(1))

    with pytest.warns(UserWarning, match="attention.out_proj: never runs"):
        assert list(ng.normgrad(Attend(), torch.randn(1, 3, 16, 16), layers=nn.Linear)) == ["head"]


def test_non_image_inputs():
    sequence_model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ng.NormGradError) as info:
        ng.normgrad(sequence_model, torch.randn(1, 4, 100), layers="0")
    assert "1-D models are not supported" in str(info.value) and "batch dimension" not in str(info.value)
    image_model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ng.NormGradError, match=r"one image \(C, H, W\) needs a batch dimension, x\[None\]"):
        ng.normgrad(image_model, torch.randn(3, 20, 18), layers="0")


def test_flattened_maps_and_sequences():
    model = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.Flatten(2), nn.Conv1d(4, 4, 1), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(1, 3, 16, 24)
    model(x)
    maps = ng.normgrad(model, x, layers=["0", "1", "2"])
    torch.testing.assert_close(maps["1"], maps["0"])  # the same activation, flattened
    assert maps["2"].shape == (1, 1, 4, 6)
    cropped = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.Flatten(2), nn.Conv1d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    cropped(x)
    with pytest.raises(ng.NormGradError, match="1-D model has no image map"):
        ng.normgrad(cropped, x, layers=["2"])  # 22 positions: no grid of 16×24


class ConvTokens(nn.Module):
    """LeViT's pattern: conv + BatchNorm, then tokens."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 4, stride=4), nn.BatchNorm2d(8), nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.bn(self.conv(x)).flatten(2).transpose(1, 2)
        return self.head(F.gelu(tokens).mean(1))


def conv_tokens() -> ConvTokens:
    """A float64 ConvTokens in eval mode with running variances away from 1 (so the BatchNorm backward matters)."""
    model = ConvTokens().double().eval()
    model.bn.running_var.uniform_(0.5, 2.0)
    return model


def test_batchnorm_backward_workaround():
    """PyTorch's BatchNorm backward is wrong at batch 1 for a channels-last gradient with a short batch stride."""
    from normgrad.engine.workarounds import guard_batchnorm_backward

    bn = nn.BatchNorm2d(8).double().eval()
    bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 8, 3, 5, dtype=torch.double, requires_grad=True)
    grad = torch.randn(3 * 5 * 8, dtype=torch.double).as_strided((1, 8, 3, 5), (8, 1, 40, 8))  # what token reshapes produce
    expected = grad / (bn.running_var + bn.eps).sqrt().view(1, -1, 1, 1)
    y = bn(x)
    guard_batchnorm_backward(y)
    (fixed,) = torch.autograd.grad(y, x, grad)
    torch.testing.assert_close(fixed, expected)

    model = conv_tokens()
    images = torch.randn(2, 3, 16, 24, dtype=torch.double)
    batch = ng.normgrad(model, images, 1, layers=["input", "conv"])
    for i in range(2):
        alone = ng.normgrad(model, images[i : i + 1], 1, layers=["input", "conv"])
        for layer in alone:
            torch.testing.assert_close(batch[layer][i : i + 1], alone[layer])


def test_captum_input_baselines_get_the_batchnorm_workaround():
    """Captum's gradient and input x gradient at batch 1 on LeViT's conv + BatchNorm + tokens pattern equal the batch's."""
    pytest.importorskip("captum")

    model = conv_tokens()
    images = torch.randn(2, 3, 16, 24, dtype=torch.double)
    for method in (ng.baselines.gradient, ng.baselines.input_x_gradient):
        batch = method(model, images, 1)["input"]
        for i in range(2):
            torch.testing.assert_close(method(model, images[i : i + 1], 1)["input"], batch[i : i + 1])


def test_gradcam_reads_the_same_layout():
    """Captum's Grad-CAM averages over dims 2+: channels-last and token layers are shown to it as (N, C, h, w)."""
    model = TinySwin().eval()
    x = torch.randn(2, 3, 16, 24)
    channels_last = ng.baselines.gradcam(model, x, 1, layers=["norm"])["norm"]
    grid = {}

    def as_grid(module, inputs, output):  # the same activation, laid out channels first by hand
        grid["a"] = output
        output.retain_grad()

    handle = model.norm.register_forward_hook(as_grid)
    try:
        model(x)[:, 1].sum().backward()
    finally:
        handle.remove()
    a, g = grid["a"].permute(0, 3, 1, 2), grid["a"].grad.permute(0, 3, 1, 2)
    expected = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp_min(0)
    torch.testing.assert_close(channels_last, expected.detach())
    model.zero_grad(set_to_none=True)
    tokens = ng.baselines.gradcam(TinyDeiT().eval(), x, 1, layers=["mlp.2"])["mlp.2"]
    assert tokens.shape == (2, 1, 4, 6)


def test_a_tensor_with_metadata_is_an_activation_two_tensors_are_not():
    class WithSize(nn.Module):  # MViTv2's blocks return (x, feature size)
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 4, stride=4)

        def forward(self, x):
            y = self.conv(x)
            return y, list(y.shape[-2:])

    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stage, self.pair, self.head = WithSize(), Pair(), nn.Linear(4, 3)

        def forward(self, x):
            y, _ = self.stage(x)
            return self.head(self.pair(y)[0].mean((2, 3)))

    x, net = torch.randn(2, 3, 16, 24), Net()
    torch.testing.assert_close(ng.normgrad(net, x, layers=["stage"])["stage"], ng.normgrad(net, x, layers=["stage.conv"])["stage.conv"])
    with pytest.raises(ng.NormGradError, match="outputs a tuple"):
        ng.normgrad(net, x, layers=["pair"])


@pytest.mark.parametrize(
    "layout, shape",
    [
        (Layout("nchw", (4, 6)), (2, 5, 4, 6)),
        (Layout("nhwc", (4, 6)), (2, 4, 6, 5)),
        (Layout("tokens", (4, 6), 2), (2, 26, 5)),
        (Layout("flat", (4, 6)), (2, 5, 24)),
        (Layout("vector"), (2, 5)),
    ],
)
def test_layout_views_round_trip(layout, shape):
    tensor = torch.randn(shape)
    grid = layout.to_nchw(tensor)
    assert grid.shape == (2, 5, *layout.grid)
    torch.testing.assert_close(layout.from_nchw(grid, tensor), tensor)
    if layout.kind == "tokens":  # row-major: grid position (r, c) is token prefix + r·w + c
        torch.testing.assert_close(grid[:, :, 1, 4], tensor[:, 2 + 1 * 6 + 4])
