"""Default layers are block outputs (the residual sum, never a branch or a layer inside a block), chosen where they have
a map at the sizes explained, or one clear refusal; the input policy finds a size the model accepts."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import normgrad as ng
from normgrad.defaults import choose_layers, explain_defaults, input_policy, probe
from normgrad.engine.default_layers import auto_layers, block_outputs
from normgrad.engine.describe import describe_layers
from normgrad.models import Preprocess

INTERNALS = ("downsample", ".conv.", ".block.", ".proj", ".f.", "attn", "shortcut", "branch")


@pytest.mark.parametrize("build", [torchvision.models.resnet18, torchvision.models.mobilenet_v2, torchvision.models.mnasnet0_5,
                                   torchvision.models.efficientnet_b0, torchvision.models.efficientnet_b1,
                                   torchvision.models.regnet_x_400mf])  # fmt: skip
def test_default_layers_are_block_outputs_not_their_insides(build):
    torch.manual_seed(0)
    model = build(num_classes=10).eval()
    x = torch.randn(1, 3, 96, 128)
    chosen = [*auto_layers(model, x), *choose_layers(probe(model, x))]
    modules = dict(model.named_modules())
    assert not any(part in name for name in chosen for part in INTERNALS), chosen
    for name in chosen:  # never a layer whose output a BatchNorm or an activation finishes
        parent, _, index = name.rpartition(".")
        if index.isdigit() and isinstance(modules.get(parent), nn.Sequential) and int(index) + 1 < len(modules[parent]):
            follower = modules[parent][int(index) + 1]
            assert not isinstance(follower, (nn.BatchNorm2d, nn.ReLU, nn.ReLU6)), (name, type(follower).__name__)


class Stage(nn.Module):
    """A stage module (not a Sequential): a downsampling, then a block sequence that ends it."""

    def __init__(self, channels: int, ends_with_blocks: bool = True) -> None:
        super().__init__()
        self.downsample = nn.Sequential(nn.BatchNorm2d(channels), nn.Conv2d(channels, channels, 2, stride=2))
        self.blocks = nn.Sequential(*(Residual(channels) for _ in range(2)))
        self.norm = nn.Identity() if ends_with_blocks else nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.norm(self.blocks(self.downsample(x)))


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())

    def forward(self, x):
        return x + self.branch(x)


class Staged(nn.Module):
    def __init__(self, ends_with_blocks: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.stages = nn.Sequential(*(Stage(8, ends_with_blocks) for _ in range(3)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


@pytest.mark.parametrize("ends_with_blocks", [True, False])
def test_blocks_of_a_stage_module_count_only_when_they_end_the_stage(ends_with_blocks):
    model = Staged(ends_with_blocks).eval()
    stages = probe(model, torch.randn(1, 3, 128, 160))
    names = [s.name for s in stages]
    assert not any("downsample" in n or "branch" in n for n in names), names
    assert any(".blocks." in n for n in names) == ends_with_blocks, names


class TupleBlock(nn.Module):
    """A block that returns several tensors (TNT's (pixel, patch) embeddings, CrossViT's branches, HRNet's resolutions)."""

    def __init__(self, kind: type) -> None:
        super().__init__()
        self.kind = kind
        self.mix = nn.Linear(16, 16)

    def forward(self, inputs):
        tokens, inner = inputs
        return self.kind((tokens + self.mix(tokens), inner * 2))


class TupleTokens(nn.Module):
    """A class-token model whose blocks output tuples: no block output has a map; its final norm's patch tokens are zero."""

    def __init__(self, kind: type, projection: bool = False) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 16, 8, stride=8)
        self.proj = nn.LayerNorm(16) if projection else nn.Identity()  # TNT's norm2_proj: the patch embedding's last step
        self.cls_token = nn.Parameter(torch.randn(1, 1, 16))
        self.blocks = nn.Sequential(*(TupleBlock(kind) for _ in range(4)))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)
        self.num_prefix_tokens = 1

    def forward(self, x):
        tokens = self.proj(self.patch_embed(x).flatten(2).transpose(1, 2))
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], 1)
        tokens, _ = self.blocks((tokens, tokens.mean(1)))
        return self.head(self.norm(tokens)[:, 0])


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("kind", [tuple, list])
def test_blocks_that_output_several_tensors_get_one_clear_refusal_not_a_fallback(kind, projection):
    model = TupleTokens(kind, projection).eval()  # a projection before the first block is the patch embedding, no block
    x = torch.randn(1, 3, 64, 96)
    for choose in (lambda: auto_layers(model, x), lambda: explain_defaults(model, Preprocess(size=64, fixed_size=(64, 96)))):
        with pytest.raises(ng.NormGradError) as error:
            choose()
        message = str(error.value)
        assert "cannot choose default layers" in message and "--layers" in message and "layers=[...] in Python" in message
        assert f"output a {kind.__name__}" in message or "neither stage outputs nor block outputs" in message


class NeedsMultiple(nn.Module):
    """A model whose skip connection needs each side divisible by ``multiple`` (as DLA, HRNet and HaloNet do)."""

    def __init__(self, multiple: int) -> None:
        super().__init__()
        self.multiple = multiple
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

    def forward(self, x):
        y = self.stem(x)
        coarse = F.avg_pool2d(y, self.multiple)
        return self.head(y + F.interpolate(coarse, scale_factor=self.multiple))  # a size mismatch unless divisible


@pytest.mark.parametrize("multiple", [2, 8, 16, 32, 64])
def test_the_input_policy_finds_sizes_a_model_with_divisibility_constraints_accepts(multiple):
    model = NeedsMultiple(multiple).eval()
    policy = input_policy(model, Preprocess(size=64))
    assert policy.max_size == 128 and policy.multiple <= multiple and multiple % policy.multiple == 0
    for width, height in ((451, 300), (300, 451), (640, 480), (97, 1000)):
        size = policy.input_size(width, height)
        assert all(side % multiple == 0 for side in size), size
        model(torch.zeros(1, 3, *size))  # accepted


def test_a_model_that_takes_any_size_keeps_any_size():
    policy = input_policy(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), Preprocess(size=64))
    assert policy.multiple == 1 and policy.max_size == 128 and policy.input_size(451, 300) == (128, 192)


class ResampledTokens(nn.Module):
    """MobileViTv2's pattern: a block resamples its input to a multiple of 16 and outputs tokens on that grid."""

    def forward(self, x):
        h, w = -(-x.shape[-2] // 16) * 16, -(-x.shape[-1] // 16) * 16
        return F.interpolate(x, size=(h, w)).flatten(2).transpose(1, 2)  # (N, h·w, C): a grid of the input only if it fits


class SizeDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.blocks = nn.Sequential(*(Residual(8) for _ in range(3)), nn.Conv2d(8, 8, 2, stride=2), *(Residual(8) for _ in range(2)))
        self.tokens = ResampledTokens()
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.tokens(self.blocks(self.stem(x))).mean(1))


def test_default_layers_have_maps_at_the_sizes_explained():
    model = SizeDependent().eval()
    defaults = explain_defaults(model, Preprocess(size=64))
    assert "tokens" in {s.name for s in probe(model, torch.randn(1, 3, 64, 64))}  # a map at the model's own size
    assert "tokens" not in defaults.layers
    for width, height in ((451, 300), (300, 451)):
        x = torch.randn(1, 3, *defaults.preprocess.input_size(width, height))
        maps = defaults.method(model, x, None, layers=list(defaults.layers))
        assert list(maps) == list(defaults.layers)


def test_a_model_that_takes_only_its_own_size_gets_exactly_that_size():
    """A flattening head (or HaloNet's blocks): no other size works, so every photo is resized to the model's own square."""
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 64 * 64, 5))
    policy = input_policy(model, Preprocess(size=64))
    assert policy.max_size is None and policy.fixed_size == (64, 64)
    for width, height in ((451, 300), (300, 451)):
        model(torch.zeros(1, 3, *policy.input_size(width, height)))  # accepted


FAMILIES = {  # timm families where the default once picked internals or fell back (random weights, small inputs)
    "efficientvit_b0": (128, 160), "fastvit_t8": (128, 160), "dla34": (128, 128), "resnest14d": (128, 160), "ghostnet_100": (128, 160),
    "ghostnetv2_100": (128, 160), "hgnetv2_b0": (128, 160), "fasternet_t0": (128, 160), "inception_next_atto": (128, 160),
    "shvit_s1": (224, 224), "volo_d1_224": (224, 224), "pit_ti_224": (224, 224), "mobilevitv2_050": (256, 256),
    "hrnet_w18_small": (128, 160), "selecsls42b": (128, 160), "coat_tiny": (224, 224),
}  # fmt: skip
REFUSED = {"tnt_s_patch16_224": (224, 224), "crossvit_tiny_240": (240, 240)}  # blocks output tuples / lists of branches
FORBIDDEN = ("attn", "attention", "downsample", "shortcut", "proj", "head", "aggregation", "patch_embed", "stem", "conv_dw", ".se")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_timm_families_get_block_outputs_as_default_layers(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, *FAMILIES[name])
    stages = probe(model, x)
    chosen = [*auto_layers(model, x), *choose_layers(stages)]
    declared = {entry["module"] for entry in model.feature_info}  # timm's feature stages: SelecSLS's convolutions head.1, head.3
    assert chosen and not any(part in layer and not (part == "head" and layer in declared) for layer in chosen for part in FORBIDDEN)
    assert set(choose_layers(stages)) <= {s.name for s in stages if not s.zero}
    maps = ng.normgrad(model, x, 0, layers=chosen)
    assert all(bool(m.abs().sum() > 0) for m in maps.values()), [name for name, m in maps.items() if not m.abs().sum() > 0]


@pytest.mark.slow
def test_hrnet_defaults_are_the_outputs_around_its_resolution_lists_not_their_branches_or_summands():
    """HRNet's stages output lists of resolutions; ``incre_modules``/``downsamp_modules`` are summands of a sum computed inline."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("hrnet_w18_small", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, *FAMILIES["hrnet_w18_small"])
    outputs = block_outputs(model, describe_layers(model, x))
    assert not any(name.startswith(("transition", "incre_modules", "downsamp_modules", "stage")) for name in outputs), outputs
    assert auto_layers(model, x) == ["layer1", "final_layer"]
    assert list(choose_layers(probe(model, x))) == ["layer1", "final_layer"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REFUSED))
def test_timm_families_without_block_maps_get_a_refusal(name):
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, *REFUSED[name])
    for choose in (lambda: auto_layers(model, x), lambda: choose_layers(probe(model, x))):
        with pytest.raises(ng.NormGradError, match="cannot choose default layers.*--layers"):
            choose()


def photo_file(path, width: int, height: int):
    from PIL import Image

    Image.fromarray(torch.randint(0, 255, (height, width, 3), dtype=torch.uint8).numpy()).save(path)
    return path


SIDE_MULTIPLE = {"method": "normgrad", "layers": ["stem"], "workers": 0, "writers": 0, "verbose": False}


def test_a_size_given_keeps_the_side_multiple_the_model_needs(tmp_path):
    photo = photo_file(tmp_path / "wide.png", 90, 60)
    model = NeedsMultiple(16).eval()
    result = ng.explain([photo], model=model, preprocess=Preprocess(size=48), size=56, **SIDE_MULTIPLE)  # 56x84 unless rounded
    assert result.ok, result.failed
    (explained,) = result.images
    assert all(side % 16 == 0 for side in explained.explained_at) and min(explained.explained_at) == 64, explained.explained_at
    assert result.settings["input"] == {"size": 56, "max_size": None, "fixed_size": None, "multiple": 16}


def test_a_size_given_to_a_model_that_takes_only_its_own_size_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 64 * 64, 5)).eval()
    with pytest.raises(ng.NormGradError, match=r"--size does not apply to .*takes only its own input size, 64x64"):
        ng.explain([torch.zeros(3, 64, 64)], model=model, preprocess=Preprocess(size=64), size=80, **{**SIDE_MULTIPLE, "layers": ["0"]})


def test_the_side_multiple_is_part_of_the_settings_a_resume_compares(tmp_path):
    photo = photo_file(tmp_path / "wide.png", 80, 60)
    options = {**SIDE_MULTIPLE, "preprocess": Preprocess(size=48)}
    torch.manual_seed(0)
    first = ng.explain([photo], tmp_path / "out", model=NeedsMultiple(8).eval(), **options)
    summary = (tmp_path / "out" / "summary.json").read_text()
    assert first.ok and first.settings["input"]["multiple"] == 8 and '"multiple": 8' in summary
    torch.manual_seed(0)  # the same weights: only the multiple the model needs differs
    with pytest.raises(ng.NormGradError, match="other settings"):
        ng.explain([photo], tmp_path / "out", model=NeedsMultiple(16).eval(), resume=True, **options)


def test_a_model_that_takes_any_size_records_no_multiple():
    result = ng.explain([torch.zeros(3, 40, 60)], model=NeedsMultiple(1).eval(), preprocess=Preprocess(size=40), **SIDE_MULTIPLE)
    assert result.settings["input"] == {"size": 40, "max_size": 80, "fixed_size": None}  # as recorded by earlier versions


def test_predictions_at_the_models_own_size_keep_the_side_multiple_too(tmp_path):
    photo = photo_file(tmp_path / "wide.png", 90, 60)  # the model's own size, 48, would give 48x72
    result = ng.explain([photo], model=NeedsMultiple(16).eval(), preprocess=Preprocess(size=48), predict_at="model", **SIDE_MULTIPLE)
    assert result.ok, result.failed
    (explained,) = result.images
    assert explained.predicted_at == (64, 48) and explained.explained_at == (96, 64)


class TokenBlock(nn.Module):
    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.mix = nn.Linear(channels, channels)

    def forward(self, tokens):
        return tokens + self.mix(tokens)


class StagedClassTokens(nn.Module):
    """CoaT's pattern: each stage prepends its own class token (``cls_token1``, ``cls_token2``) and runs a list of blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed1, self.patch_embed2 = nn.Conv2d(3, 16, 4, stride=4), nn.Conv2d(16, 16, 2, stride=2)
        self.cls_token1, self.cls_token2 = nn.Parameter(torch.randn(1, 1, 16)), nn.Parameter(torch.randn(1, 1, 16))
        self.serial_blocks1 = nn.ModuleList(TokenBlock() for _ in range(2))
        self.serial_blocks2 = nn.ModuleList(TokenBlock() for _ in range(2))
        self.head = nn.Linear(32, 5)

    def stage(self, x, embed, token, blocks):
        grid = embed(x)
        tokens = torch.cat([token.expand(x.shape[0], -1, -1), grid.flatten(2).transpose(1, 2)], 1)
        for block in blocks:
            tokens = block(tokens)
        return tokens, tokens[:, 1:].transpose(1, 2).reshape(grid.shape)

    def forward(self, x):
        first, x = self.stage(x, self.patch_embed1, self.cls_token1, self.serial_blocks1)
        second, _ = self.stage(x, self.patch_embed2, self.cls_token2, self.serial_blocks2)
        return self.head(torch.cat([first[:, 0], second.mean(1)], 1))


def test_a_class_token_per_stage_counts_once_so_each_stages_blocks_have_token_maps():
    from normgrad.engine.layouts import Evidence

    model = StagedClassTokens().eval()
    x = torch.randn(1, 3, 64, 96)
    assert Evidence.of(model, x).prefix_tokens == 1
    assert auto_layers(model, x) == ["serial_blocks1.1", "serial_blocks2.0"]  # the last block's patch tokens: a readout
    maps = ng.normgrad(model, x, 0, layers=["serial_blocks1.1", "serial_blocks2.1"])
    assert maps["serial_blocks1.1"].shape == (1, 1, 16, 24) and maps["serial_blocks2.1"].shape == (1, 1, 8, 12)


class ConvBlock(nn.Sequential):
    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(channels, channels, 3, stride=stride, padding=1), nn.BatchNorm2d(channels), nn.ReLU())


class FeaturesNamedHead(nn.Module):
    """SelecSLS's pattern: the last feature convolutions are called ``head`` (timm lists them as feature stages), ``fc`` classifies."""

    def __init__(self, declared: bool) -> None:
        super().__init__()
        self.stem = ConvBlock(8)
        self.stem[0] = nn.Conv2d(3, 8, 4, stride=4)
        self.features = nn.Sequential(ConvBlock(8), ConvBlock(8, 2), ConvBlock(8))
        self.head = nn.Sequential(ConvBlock(8, 2), ConvBlock(8), ConvBlock(8, 2), ConvBlock(8))
        self.fc = nn.Linear(8, 5)
        self.feature_info = [{"module": "features.2", "reduction": 8}] + declared * [{"module": f"head.{k}"} for k in (1, 3)]

    def forward(self, x):
        return self.fc(self.head(self.features(self.stem(x))).mean((2, 3)))


@pytest.mark.parametrize("declared", [True, False])
def test_a_module_named_head_is_a_block_output_only_where_the_model_declares_it_a_feature_stage(declared):
    model = FeaturesNamedHead(declared).eval()
    chosen = auto_layers(model, torch.randn(1, 3, 128, 192))
    assert chosen == (["features.0", "features.2", "head.1", "head.3"] if declared else ["features.0", "features.2"]), chosen


class Branches(nn.Module):
    """CrossViT's pattern: two token scales, each through its own blocks, then a list of both."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(*(TokenBlock() for _ in range(3))), nn.Sequential(*(TokenBlock() for _ in range(3)))])

    def forward(self, scales):
        return [blocks(tokens) for blocks, tokens in zip(self.blocks, scales)]


class TwoScales(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.ModuleList([nn.Conv2d(3, 16, 8, stride=8), nn.Conv2d(3, 16, 16, stride=16)])
        self.cls_token = nn.Parameter(torch.randn(1, 1, 16))
        self.blocks = nn.Sequential(Branches(), Branches())
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        token = self.cls_token.expand(x.shape[0], -1, -1)
        scales = [torch.cat([token, embed(x).flatten(2).transpose(1, 2)], 1) for embed in self.embed]
        return self.head(torch.cat([tokens.mean(1) for tokens in self.blocks(scales)], 1))


def test_blocks_inside_one_of_parallel_branches_are_never_the_default():
    with pytest.raises(ng.NormGradError, match="cannot choose default layers"):
        auto_layers(TwoScales().eval(), torch.randn(1, 3, 64, 96))


class SummedResolutions(nn.Module):
    """HRNet's pattern: parallel resolution branches (lists whose elements are fed side by side), an increment per
    resolution, and downsamplings of a running sum that ``forward`` computes inline: the lists' outputs are branches and
    summands, never the sum; the spine's outputs are ``layer1`` (before the branches) and ``final_layer`` (after the sum)."""

    def __init__(self, through_forward: bool) -> None:
        super().__init__()
        self.through_forward = through_forward
        self.conv1 = nn.Conv2d(3, 8, 4, stride=4)
        self.layer1 = nn.Sequential(Residual(8), Residual(8))
        self.transition = nn.ModuleList([ConvBlock(8), ConvBlock(8, 2), nn.Sequential(ConvBlock(8, 2), ConvBlock(8, 2))])
        self.incre_modules = nn.ModuleList(nn.Sequential(Residual(8)) for _ in range(3))
        self.downsamp_modules = nn.ModuleList(ConvBlock(8, 2) for _ in range(2))
        self.final_layer = ConvBlock(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.layer1(self.conv1(x))
        branches = [transition(x) for transition in self.transition]
        y = self.incre_modules[0](branches[0])
        for incre, down, branch in zip(self.incre_modules[1:], self.downsamp_modules, branches[1:]):
            y = incre(branch) + (down.forward(y) if self.through_forward else down(y))  # timm: ``down``'s own hooks never fire
        return self.fc(self.final_layer(y).mean((2, 3)))


@pytest.mark.parametrize("through_forward", [True, False])
def test_lists_of_branches_and_summands_are_not_the_spine(through_forward):
    model = SummedResolutions(through_forward).eval()
    x = torch.randn(1, 3, 128, 192)
    assert auto_layers(model, x) == ["layer1", "final_layer"]
    assert list(choose_layers(probe(model, x))) == ["layer1", "final_layer"]


class JoiningBlock(Residual):
    """A block that may take a second input beside the running state (a U-Net decoder block's skip connection)."""

    def forward(self, x, skip=None):
        return super().forward(x) if skip is None else super().forward(x) + skip


class Chain(nn.Module):
    """Four equal blocks in a ``ModuleList``, used by ``forward`` as ``pattern`` says."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = pattern
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.blocks = nn.ModuleList(JoiningBlock(8) for _ in range(4))
        self.pos_embed = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        if self.pattern == "side by side":  # parallel branches of one input, summed
            x = sum(block(x) for block in self.blocks)
        else:
            skip = x
            for k, block in enumerate(self.blocks):
                if self.pattern == "skips some" and k == 1:
                    continue
                x = block(x, skip) if self.pattern == "image-derived beside" and k == 2 else block(x)  # the block mixes it in
                if self.pattern == "parameter between" and k == 1:  # VOLO adds its position embedding between two stages
                    x = x + self.pos_embed
                if self.pattern == "image-derived between" and k == 1:  # another summand from the image: x is now a sum
                    x = x + skip
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize(
    ("pattern", "chained"),
    [
        ("chain", True),
        ("parameter between", True),
        ("image-derived beside", True),
        ("side by side", False),
        ("image-derived between", False),
        ("skips some", False),
    ],
)
def test_a_list_is_a_chain_when_each_element_runs_on_the_previous_output_alone(pattern, chained):
    model = Chain(pattern).eval()
    described = describe_layers(model, torch.randn(1, 3, 64, 96))
    infos = {info.name: info for info in described}
    assert infos["blocks"].chained == chained
    assert infos["blocks.0.branch"].chained  # a Sequential run by its own forward is a chain by definition
    assert ("blocks.2" in block_outputs(model, described)) == chained
