"""Pixel-level TracIn: the closed forms against literal per-example and per-location autograd, and against Captum."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import SmallNet, randomize_batchnorm
from influence_reference import literal_maps, literal_scores, literal_self_maps
from normgrad.errors import NormGradError
from normgrad.tracin import TracIn


class TokenNet(nn.Module):
    """A patch embedding to tokens (N, T, C), a Linear on the tokens, mean pooling, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 4, stride=4)
        self.mlp = nn.Linear(6, 5)
        self.act = nn.GELU()
        self.head = nn.Linear(5, 4)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.act(self.mlp(tokens)).mean(1))


class ClassTokenNet(TokenNet):
    """TokenNet with a class token before the patch tokens (read from the head): a prefix token without a location."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, 6))

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        hidden = self.act(self.mlp(tokens))
        return self.head(hidden[:, 0] + hidden[:, 1:].mean(1))


def checkpoints_of(model: nn.Module, count: int = 2) -> list[dict[str, torch.Tensor]]:
    """``count`` states near the model's: the checkpoints of a pretend training run."""
    states = []
    for _ in range(count):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for key, value in state.items():
            if value.is_floating_point() and "running" not in key:
                value.add_(0.1 * torch.randn_like(value))
        states.append(state)
    return states


def setting(model: nn.Module, side: int = 12, classes: int = 7):
    model = model.double().eval()
    train_x, test_x = torch.randn(3, 3, side, side, dtype=torch.float64), torch.randn(2, 3, side, side, dtype=torch.float64)
    train_y, test_y = torch.randint(0, classes, (3,)), torch.randint(0, classes, (2,))
    return model, train_x, train_y, test_x, test_y, checkpoints_of(model), [0.5, 0.2]


CONV_LAYERS = [
    "features.0",  # stride 2, padding 1, bias
    "features.3",  # dilation 2, groups 2
    "features.5",  # 'same' reflect padding, depthwise
    "features.8",  # a 3×1 kernel, stride (1, 2)
]


@pytest.mark.parametrize("layer", CONV_LAYERS)
def test_conv_maps_equal_per_location_weight_copies(layer):
    model, train_x, train_y, test_x, test_y, states, lrs = setting(randomize_batchnorm(SmallNet(inplace=False)))
    tracin = TracIn(model, [layer], extract="layer", checkpoints=states, lr=lrs)
    result = tracin.maps(train_x, train_y, tracin.test_gradients(test_x, test_y))
    expected = literal_maps(model, layer, "layer", train_x, train_y, test_x, test_y, states, lrs)
    torch.testing.assert_close(result.maps[layer].flatten(2), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("layer", "extract"), [("features.2", "conv1x1"), ("features.7", "conv1x1"), ("features.2", "scaling")])
def test_virtual_layer_maps_equal_per_location_copies(layer, extract):
    model, train_x, train_y, test_x, test_y, states, lrs = setting(randomize_batchnorm(SmallNet(inplace=False)))
    tracin = TracIn(model, [layer], extract=extract, checkpoints=states, lr=lrs)
    result = tracin.maps(train_x, train_y, tracin.test_gradients(test_x, test_y))
    expected = literal_maps(model, layer, extract, train_x, train_y, test_x, test_y, states, lrs)
    torch.testing.assert_close(result.maps[layer].flatten(2), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("layer", "extract"), [("mlp", "layer"), ("mlp", "conv1x1")])
def test_linear_on_tokens_maps_equal_per_location_copies(layer, extract):
    model, train_x, train_y, test_x, test_y, states, lrs = setting(TokenNet(), side=8, classes=4)
    tracin = TracIn(model, [layer], extract=extract, checkpoints=states, lr=lrs)
    result = tracin.maps(train_x, train_y, tracin.test_gradients(test_x, test_y))
    expected = literal_maps(model, layer, extract, train_x, train_y, test_x, test_y, states, lrs)
    assert result.maps[layer].shape == (3, 2, 2, 2)
    torch.testing.assert_close(result.maps[layer].flatten(2), expected, rtol=1e-9, atol=1e-12)


def test_prefix_tokens_count_in_the_score_and_have_no_location_on_the_map():
    model, train_x, train_y, test_x, test_y, states, lrs = setting(ClassTokenNet(), side=8, classes=4)
    tracin = TracIn(model, ["mlp"], extract="layer", checkpoints=states, lr=lrs)
    result = tracin.maps(train_x, train_y, tracin.test_gradients(test_x, test_y))
    expected = literal_maps(model, "mlp", "layer", train_x, train_y, test_x, test_y, states, lrs)  # (N, T, 1 + 4)
    torch.testing.assert_close(result.maps["mlp"].flatten(2), expected[..., 1:], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result.scores, expected.sum(-1), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("layer", "extract"), [("features.3", "layer"), ("features.8", "layer"), ("features.2", "conv1x1"), ("classifier", "layer")]
)
def test_map_sums_equal_literal_example_scores(layer, extract):
    model, train_x, train_y, test_x, test_y, states, lrs = setting(randomize_batchnorm(SmallNet(inplace=False)))
    tracin = TracIn(model, [layer], extract=extract, checkpoints=states, lr=lrs)
    tests = tracin.test_gradients(test_x, test_y)
    result = tracin.maps(train_x, train_y, tests)
    expected = literal_scores(model, layer, extract, train_x, train_y, test_x, test_y, states, lrs)
    torch.testing.assert_close(result.maps[layer].sum((2, 3)), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result.scores, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(tracin.scores(train_x, train_y, tests), expected, rtol=1e-9, atol=1e-12)


def test_scores_over_several_layers_are_the_sum_of_each_layer():
    model, train_x, train_y, test_x, test_y, states, lrs = setting(randomize_batchnorm(SmallNet(inplace=False)))
    layers = ["features.0", "features.3"]
    tracin = TracIn(model, layers, extract="layer", checkpoints=states, lr=lrs)
    result = tracin.maps(train_x, train_y, tracin.test_gradients(test_x, test_y))
    expected = sum(literal_scores(model, layer, "layer", train_x, train_y, test_x, test_y, states, lrs) for layer in layers)
    torch.testing.assert_close(result.scores, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("layer", "extract"), [("features.3", "layer"), ("features.2", "conv1x1")])
def test_self_influence_maps_equal_literal_terms(layer, extract):
    model, train_x, train_y, _, _, states, lrs = setting(randomize_batchnorm(SmallNet(inplace=False)))
    tracin = TracIn(model, [layer], extract=extract, checkpoints=states, lr=lrs)
    result = tracin.self_influence(train_x, train_y)
    expected = literal_self_maps(model, layer, extract, train_x, train_y, states, lrs)
    torch.testing.assert_close(result.maps[layer].flatten(1), expected, rtol=1e-9, atol=1e-12)
    literal = literal_scores(model, layer, extract, train_x, train_y, train_x, train_y, states, lrs).diagonal()
    torch.testing.assert_close(result.scores, literal, rtol=1e-9, atol=1e-12)


def test_in_place_layers_give_the_same_maps_as_out_of_place_ones():
    model, train_x, train_y, test_x, test_y, states, lrs = setting(randomize_batchnorm(SmallNet(inplace=False)))
    in_place = SmallNet(inplace=True).double().eval()
    in_place.load_state_dict(model.state_dict())
    results = []
    for net in (model, in_place):
        extracts = {"features.2": "conv1x1", "features.5": "layer"}
        tracin = TracIn(net, ["features.2", "features.5"], extract=extracts, checkpoints=states, lr=lrs)
        results.append(tracin.maps(train_x, train_y, tracin.test_gradients(test_x, test_y)))
    for layer in ("features.2", "features.5"):
        torch.testing.assert_close(results[0].maps[layer], results[1].maps[layer])


def test_model_is_left_as_it_was():
    model = randomize_batchnorm(SmallNet()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tracin = TracIn(model, ["features.3"], extract="layer", checkpoints=checkpoints_of(model), lr=0.1)
    tracin.maps(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), tracin.test_gradients(torch.randn(1, 3, 16, 16), torch.tensor([2])))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


def test_layer_extract_on_a_layer_without_weights_is_refused():
    with pytest.raises(NormGradError, match="needs a Conv2d or Linear"):
        TracIn(SmallNet(), ["features.2"], extract="layer")


def test_checkpoint_that_does_not_fit_is_refused():
    model = SmallNet()
    state = model.state_dict()
    state.pop("classifier.bias")
    with pytest.raises(NormGradError, match="lacks 'classifier.bias'"):
        TracIn(model, ["features.3"], checkpoints=[state])


def test_one_learning_rate_per_checkpoint():
    model = SmallNet()
    with pytest.raises(NormGradError, match="lr has 3 values for 2 checkpoints"):
        TracIn(model, ["features.3"], checkpoints=checkpoints_of(model), lr=[1.0, 2.0, 3.0])


def captum_tracin(model: nn.Module, layer: str, train_x, train_y, states, lrs, tmp_path):
    """Captum's TracInCP restricted to ``layer``'s parameters, on checkpoint files with their learning rates."""
    from captum.influence import TracInCP
    from torch.utils.data import TensorDataset

    paths = []
    for index, (state, lr) in enumerate(zip(states, lrs)):
        paths.append(str(tmp_path / f"checkpoint{index}.pt"))
        torch.save({"state_dict": state, "lr": lr}, paths[-1])

    def load(net: nn.Module, path: str) -> float:
        checkpoint = torch.load(path, weights_only=True)
        net.load_state_dict(checkpoint["state_dict"])
        return checkpoint["lr"]

    return TracInCP(
        copy.deepcopy(model),
        TensorDataset(train_x, train_y),
        paths,
        checkpoints_load_func=load,
        layers=[layer],
        loss_fn=nn.CrossEntropyLoss(reduction="none"),
        batch_size=len(train_x),
    )


@pytest.mark.parametrize("layer", ["features.3", "features.5", "classifier"])
def test_example_scores_equal_captum_tracincp_on_the_layer(layer, tmp_path):
    model, train_x, train_y, test_x, test_y, states, lrs = setting(randomize_batchnorm(SmallNet(inplace=False)))
    tracin = TracIn(model, [layer], extract="layer", checkpoints=states, lr=lrs)
    result = tracin.maps(train_x, train_y, tracin.test_gradients(test_x, test_y))
    captum = captum_tracin(model, layer, train_x, train_y, states, lrs, tmp_path)
    expected = captum.influence((test_x, test_y)).T
    torch.testing.assert_close(result.scores, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result.maps[layer].sum((2, 3)), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(tracin.self_influence(train_x, train_y).scores, captum.self_influence(), rtol=1e-9, atol=1e-12)


class WithIdentity(nn.Module):
    """``net`` with a real identity 1×1 convolution inserted after ``features[index]``: Captum's view of a virtual layer."""

    def __init__(self, net: SmallNet, index: int, channels: int) -> None:
        super().__init__()
        self.net = net
        self.identity = nn.Conv2d(channels, channels, 1, bias=False)
        with torch.no_grad():
            self.identity.weight.copy_(torch.eye(channels)[:, :, None, None])
        self.index = index

    def forward(self, x):
        for position, module in enumerate(self.net.features):
            x = module(x)
            if position == self.index:
                x = self.identity(x)
        return self.net.classifier(self.net.pool(x).flatten(1))


def test_virtual_identity_scores_equal_captum_on_an_inserted_identity_convolution(tmp_path):
    model, train_x, train_y, test_x, test_y, states, lrs = setting(randomize_batchnorm(SmallNet(inplace=False)))
    tracin = TracIn(model, ["features.2"], extract="conv1x1", checkpoints=states, lr=lrs)
    result = tracin.maps(train_x, train_y, tracin.test_gradients(test_x, test_y))
    inserted = WithIdentity(model, 2, 8).double().eval()
    eye = inserted.identity.weight.detach()
    inserted_states = [{**{f"net.{k}": v for k, v in state.items()}, "identity.weight": eye} for state in states]
    captum = captum_tracin(inserted, "identity", train_x, train_y, inserted_states, lrs, tmp_path)
    expected = captum.influence((test_x, test_y)).T
    torch.testing.assert_close(result.maps["features.2"].sum((2, 3)), expected, rtol=1e-9, atol=1e-12)
