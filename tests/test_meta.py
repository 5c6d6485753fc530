"""Meta-saliency against a literal implementation: deep copy, torch.optim.SGD step(s), then the method."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import normgrad as ng
from conftest import SmallNet, randomize_batchnorm
from test_engine import assert_untouched, snapshot

LAYERS = ["input", "features.3", "features.7"]


def literal_meta(model, x, labels, *, lr, steps=1, adversarial=False, method=ng.normgrad, target=None, **kwargs):
    """The definition: copy the model, step it with torch.optim.SGD in eval mode, run the method."""
    stepped = copy.deepcopy(model).eval()
    optimizer = torch.optim.SGD([p for p in stepped.parameters() if p.requires_grad], lr=lr, maximize=adversarial)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(stepped(x), labels).backward()
        optimizer.step()
    return method(stepped, x, labels if target is None else target, **kwargs)


@pytest.fixture
def model():
    net = randomize_batchnorm(SmallNet(inplace=True))
    net.train()  # meta-saliency must use eval mode whatever the mode
    return net


def assert_maps_close(a, b, rtol=2e-4):
    assert list(a) == list(b)
    for key in a:
        scale = b[key].abs().max().item()
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("adversarial", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_per_sample_equals_one_literal_step_per_image(model, adversarial, steps):
    x = torch.randn(3, 3, 20, 18)
    labels = torch.tensor([1, 4, 6])
    got = ng.meta_saliency(model, x, labels, lr=0.05, steps=steps, adversarial=adversarial, layers=LAYERS)
    for i in range(3):
        expected = literal_meta(model, x[i : i + 1], labels[i : i + 1], lr=0.05, steps=steps, adversarial=adversarial, layers=LAYERS)
        assert_maps_close({k: v[i : i + 1] for k, v in got.items()}, expected)


@pytest.mark.parametrize("adversarial", [False, True])
def test_shared_step_equals_a_literal_minibatch_step(model, adversarial):
    x = torch.randn(4, 3, 20, 18)
    labels = torch.tensor([0, 2, 2, 5])
    got = ng.meta_saliency(model, x, labels, lr=0.05, steps=2, adversarial=adversarial, per_sample=False, layers=LAYERS)
    assert_maps_close(got, literal_meta(model, x, labels, lr=0.05, steps=2, adversarial=adversarial, layers=LAYERS))


def test_meta_maps_differ_from_plain_and_lr_zero_is_exactly_plain(model):
    x = torch.randn(2, 3, 20, 18)
    plain = ng.normgrad(model, x, layers=LAYERS)
    meta = ng.meta_saliency(model, x, lr=0.05, layers=LAYERS)
    assert not torch.allclose(meta["features.3"], plain["features.3"])
    zero = ng.meta_saliency(model, x, lr=0.0, layers=LAYERS)
    for key in plain:
        assert torch.equal(zero[key], plain[key])


def test_default_target_and_labels_are_the_predicted_class(model):
    x = torch.randn(2, 3, 20, 18)
    predicted = model.eval()(x).argmax(1)
    model.train()
    assert_maps_close(ng.meta_saliency(model, x, lr=0.05, layers=LAYERS), ng.meta_saliency(model, x, predicted, lr=0.05, layers=LAYERS))


def test_wraps_any_method_and_kwargs(model):
    x = torch.randn(2, 3, 20, 18)
    labels = torch.tensor([3, 3])
    for method, kwargs in [
        (ng.normgrad_selective, {"layers": LAYERS}),
        (ng.saliency, {"layers": ["features.0", "features.8"], "extract": "layer", "aggregate": "max"}),
        (ng.saliency, {"layers": "features.5", "extract": "depthwise3x3", "aggregate": "sum"}),
    ]:
        got = ng.meta_saliency(model, x, labels, method=method, lr=0.05, **kwargs)
        for i in range(2):
            expected = literal_meta(model, x[i : i + 1], labels[i : i + 1], lr=0.05, method=method, **kwargs)
            assert_maps_close({k: v[i : i + 1] for k, v in got.items()}, expected)


def test_training_loss_target_and_custom_method(model):
    x = torch.randn(2, 3, 20, 18)
    labels = torch.tensor([1, 5])
    got = ng.meta_saliency(model, x, ng.TrainingLoss(labels), lr=0.05, layers=["features.3"])
    for i in range(2):
        expected = literal_meta(
            model, x[i : i + 1], labels[i : i + 1], lr=0.05, target=ng.TrainingLoss(labels[i : i + 1]), layers=["features.3"]
        )
        assert_maps_close({k: v[i : i + 1] for k, v in got.items()}, expected)

    def logits_of(model, inputs, target):  # any callable with the (model, inputs, target) signature
        return model(inputs).gather(1, torch.as_tensor(target).view(-1, 1))

    out = ng.meta_saliency(model, x, labels, method=logits_of, lr=0.05)
    assert out.shape == (2, 1)


def test_params_choice_steps_only_those(model):
    x = torch.randn(1, 3, 20, 18)
    labels = torch.tensor([2])
    only_classifier = ng.meta_saliency(model, x, labels, lr=0.5, params=["classifier.weight", "classifier.bias"], layers=["features.3"])
    stepped = copy.deepcopy(model).eval()
    optimizer = torch.optim.SGD(stepped.classifier.parameters(), lr=0.5)
    F.cross_entropy(stepped(x), labels).backward()
    optimizer.step()
    assert_maps_close(only_classifier, ng.normgrad(stepped, x, labels, layers=["features.3"]))
    with pytest.raises(ng.NormGradError, match="unknown parameter names"):
        ng.meta_saliency(model, x, labels, params=["nope"], layers="features.3")


def test_model_bitwise_unchanged_after_success_and_error(model):
    model.classifier.weight.grad = torch.ones_like(model.classifier.weight)
    model.features[0].bias.requires_grad_(False)
    before = snapshot(model)
    x = torch.randn(2, 3, 20, 18)
    ng.meta_saliency(model, x, lr=0.1, steps=2, layers=LAYERS)
    ng.meta_saliency(model, x, lr=0.1, per_sample=False, adversarial=True, layers=LAYERS)
    assert_untouched(model, before)
    with pytest.raises(ng.NormGradError, match="unknown layer"):
        ng.meta_saliency(model, x, lr=0.1, layers=["features.3", "nope"])

    def failing(model, inputs, target):
        model(inputs)
        raise RuntimeError("halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        ng.meta_saliency(model, x, lr=0.1, method=failing)
    with pytest.raises(ng.NormGradError, match="out of range"):
        ng.meta_saliency(model, x, 99, lr=0.1, layers="features.3")
    assert_untouched(model, before)


def test_frozen_parameters_do_not_step(model):
    x = torch.randn(1, 3, 20, 18)
    labels = torch.tensor([4])
    model.features.requires_grad_(False)
    got = ng.meta_saliency(model, x, labels, lr=0.3, layers=["features.3", "features.7"])
    assert_maps_close(got, literal_meta(model, x, labels, lr=0.3, layers=["features.3", "features.7"]))


def test_resnet_batch_equals_single_calls():
    model = randomize_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10))
    x = torch.randn(3, 3, 48, 48)
    batch = ng.meta_saliency(model, x, [1, 2, 3], lr=0.01, layers=["layer1", "layer3"], chunk_size=2)
    for i in range(3):
        alone = ng.meta_saliency(model, x[i : i + 1], i + 1, lr=0.01, layers=["layer1", "layer3"])
        assert_maps_close({k: v[i : i + 1] for k, v in batch.items()}, alone)


@pytest.mark.parametrize("kwargs, message", [(dict(lr=-1.0), "lr must be a finite number ≥ 0"), (dict(steps=1.5), "steps must be")])
def test_bad_arguments(model, kwargs, message):
    with pytest.raises(ng.NormGradError, match=message):
        ng.meta_saliency(model, torch.randn(1, 3, 20, 18), layers="features.3", **kwargs)


@pytest.mark.parametrize(
    "make_model", [lambda: randomize_batchnorm(SmallNet()), lambda: torchvision.models.mobilenet_v3_small(num_classes=5)]
)
def test_vectorised_per_sample_steps_equal_the_loop(make_model):
    """torch.func.vmap really runs on these models (no silent fallback) and equals one step per image."""
    from normgrad.meta import _shared_steps, _Step, _trainable, _vmapped_steps

    model = make_model().eval()
    x, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    params = _trainable(model, None)
    per_image = _vmapped_steps(model, params, x, labels, _Step(-0.1, 2, None), chunk_size=2)
    for i in range(3):
        alone, _ = _shared_steps(model, params, x[i : i + 1], None, labels[i : i + 1], _Step(-0.1, 2, None))
        for name in params:
            torch.testing.assert_close(per_image[i][name], alone[name], rtol=1e-4, atol=1e-6)


def test_vectorised_and_looped_meta_agree(model):
    x = torch.randn(3, 3, 20, 18)
    looped = ng.meta_saliency(model, x, lr=0.05, steps=2, vectorize=False, layers=LAYERS)
    vectorised = ng.meta_saliency(model, x, lr=0.05, steps=2, vectorize=True, chunk_size=2, layers=LAYERS)
    assert_maps_close(vectorised, looped)


class DenseNet(torch.nn.Module):
    """A segmentation-style model: a dict output with dense logits (N, K, H, W), and an auxiliary head eval never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(inplace=True))
        self.classifier = torch.nn.Conv2d(6, 4, 1)
        self.aux = torch.nn.Conv2d(6, 4, 1)

    def forward(self, x):
        features = self.body(x)
        out = {"out": self.classifier(features)}
        if self.training:
            out["aux"] = self.aux(features)
        return out


def segment_score(output):
    return output["out"][:, 2].mean((1, 2))


def literal_dense_meta(model, x, loss, lr):
    stepped = copy.deepcopy(model).eval()
    optimizer = torch.optim.SGD(stepped.parameters(), lr=lr)
    loss(stepped(x)).backward()
    optimizer.step()  # parameters without a gradient (aux) are left as they are
    return ng.normgrad(stepped, x, segment_score, layers=["body.0", "body"])


def test_dict_outputs_with_a_callable_target_label_maps_and_a_custom_loss():
    model = randomize_batchnorm(DenseNet()).eval()
    x = torch.randn(2, 3, 10, 12)
    predicted = model(x)["out"].argmax(1)
    got = ng.meta_saliency(model, x, segment_score, lr=0.1, layers=["body.0", "body"])  # labels: the per-pixel prediction
    for i in range(2):
        expected = literal_dense_meta(model, x[i : i + 1], lambda out, i=i: F.cross_entropy(out["out"], predicted[i : i + 1]), 0.1)
        assert_maps_close({k: v[i : i + 1] for k, v in got.items()}, expected)
    labels = torch.randint(0, 4, (2, 10, 12))
    with_labels = ng.meta_saliency(model, x, segment_score, lr=0.1, labels=labels, per_sample=False, layers=["body.0", "body"])
    assert_maps_close(with_labels, literal_dense_meta(model, x, lambda out: F.cross_entropy(out["out"], labels), 0.1))

    def loss(output, labels):  # any loss of the output, per sample
        return output["out"].square().mean((1, 2, 3))

    custom = ng.meta_saliency(model, x, segment_score, lr=0.1, loss=loss, per_sample=False, layers=["body.0", "body"])
    assert_maps_close(custom, literal_dense_meta(model, x, lambda out: loss(out, None).mean(), 0.1))
    with pytest.raises(ng.NormGradError, match=r"must be integer label maps of shape \(1, 10, 12\)"):
        ng.meta_saliency(model, x, segment_score, lr=0.1, labels=[1, 2], layers="body")


def test_tuple_outputs_step_on_the_first_element():
    class WithFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = SmallNet()

        def forward(self, x):
            return self.net(x), x.mean()

    model = WithFeatures().eval()
    x = torch.randn(1, 3, 20, 18)
    got = ng.meta_saliency(model, x, lambda out: out[0][:, 3], lr=0.05, labels=[3], layers=["net.features.3"])
    expected = literal_meta(model.net, x, torch.tensor([3]), lr=0.05, layers=["features.3"])
    torch.testing.assert_close(got["net.features.3"], expected["features.3"], rtol=2e-4, atol=1e-6)


def test_unused_parameters_keep_their_values_and_all_unused_warns():
    model = randomize_batchnorm(DenseNet()).eval()
    x = torch.randn(1, 3, 10, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ng.meta_saliency(model, x, segment_score, lr=0.1, layers="body")  # aux never runs in eval: no error, no warning
    with pytest.warns(UserWarning, match="no stepped parameter takes part in the loss"):
        only_aux = ng.meta_saliency(model, x, segment_score, lr=0.1, params=["aux.weight", "aux.bias"], layers="body")
    torch.testing.assert_close(only_aux["body"], ng.normgrad(model, x, segment_score, layers="body")["body"])


class SharedModule(nn.Module):
    """One conv registered under two names (``pos`` and ``block.0``), like timm CoaT's shared position encodings."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(self.pos, nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

    def forward(self, x):
        return self.head(self.block(x) + self.pos(x))


class TiedWeights(nn.Module):
    """Two linear layers holding the same weight Parameter (an encoder/decoder tie), distinct biases."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.encode = nn.Linear(6, 6)
        self.decode = nn.Linear(6, 6)
        self.decode.weight = self.encode.weight
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        return self.head(torch.relu(self.decode(torch.relu(self.encode(self.features(x))))))


class UsedTwice(nn.Module):
    """One block registered once and called twice in a row."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

    def forward(self, x):
        return self.head(self.block(self.block(self.stem(x))))


class SharedAtTwoDepths(nn.Module):
    """A whole sub-block shared between two stages at different depths; one of its parameters frozen."""

    def __init__(self) -> None:
        super().__init__()
        shared = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        shared[0].bias.requires_grad_(False)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stage1 = nn.Sequential(shared)
        self.stage2 = nn.Sequential(nn.Sequential(nn.Identity(), shared))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

    def forward(self, x):
        return self.head(self.stage2(self.stage1(self.stem(x))))


SHARING = {
    "shared module": (SharedModule, ["input", "block"]),
    "tied weights": (TiedWeights, ["features.0", "encode"]),
    "used twice": (UsedTwice, ["input", "stem"]),
    "shared at two depths": (SharedAtTwoDepths, ["stem", "stage1"]),
}


def parameter_state(model):
    return [(name, type(p), p.requires_grad, p.detach().clone()) for name, p in model.named_parameters(remove_duplicate=False)]


@pytest.mark.parametrize("vectorize", [False, True])
@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("pattern", list(SHARING))
def test_meta_leaves_a_model_with_shared_parameters_bitwise_untouched(pattern, per_sample, vectorize):
    build, layers = SHARING[pattern]
    model = randomize_batchnorm(build())
    before, state = snapshot(model), parameter_state(model)
    ng.meta_saliency(model, torch.randn(2, 3, 12, 12), lr=0.5, steps=2, per_sample=per_sample, vectorize=vectorize, layers=layers)
    assert_untouched(model, before)
    for (name, kind, requires_grad, value), (_, p) in zip(state, model.named_parameters(remove_duplicate=False)):
        assert type(p) is kind is nn.Parameter and p.requires_grad == requires_grad and torch.equal(p, value), name


@pytest.mark.parametrize("pattern", list(SHARING))
def test_meta_with_shared_parameters_equals_stepping_a_copy(pattern):
    """A shared parameter takes one step with the gradient of all its uses, as torch.optim.SGD on a deep copy does."""
    build, layers = SHARING[pattern]
    model = randomize_batchnorm(build())
    x, labels = torch.randn(2, 3, 12, 12), torch.tensor([1, 3])
    got = ng.meta_saliency(model, x, labels, lr=0.5, per_sample=False, layers=layers)
    assert_maps_close(got, literal_meta(model, x, labels, lr=0.5, layers=layers))


def test_meta_params_accepts_any_alias_of_a_shared_parameter():
    model = SharedModule()
    x, labels = torch.randn(1, 3, 12, 12), torch.tensor([2])
    by_alias = ng.meta_saliency(model, x, labels, lr=0.5, params=["block.0.weight"], layers=["block"])
    by_name = ng.meta_saliency(model, x, labels, lr=0.5, params=["pos.weight"], layers=["block"])
    assert_maps_close(by_alias, by_name, rtol=0)


def test_meta_leaves_timm_coat_untouched():
    """CoaT registers its ConvPosEnc / ConvRelPosEnc under several names."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("coat_lite_tiny", pretrained=False, img_size=64).eval()
    assert len(list(model.named_parameters(remove_duplicate=False))) > len(list(model.named_parameters()))
    before, state = snapshot(model), parameter_state(model)
    ng.meta_saliency(model, torch.randn(1, 3, 64, 64), lr=0.1, layers=["patch_embed2.proj"])
    assert_untouched(model, before)
    after = model.named_parameters(remove_duplicate=False)
    assert all(type(p) is nn.Parameter and p.requires_grad == r for (_, _, r, _), (_, p) in zip(state, after))


NESTED = ["meta:meta", "adversarial:meta", "meta:adversarial", "adversarial:adversarial", "meta:meta:selective", "meta:adversarial:gradcam"]


@pytest.mark.parametrize("name", NESTED)
def test_nested_inner_step_methods_are_refused_by_name(name):
    from normgrad.registry import get_method

    with pytest.raises(ng.NormGradError, match="inner steps do not nest"):
        get_method(name)


@pytest.mark.parametrize("inner", ["registry meta", "meta_saliency", "partial of meta_saliency"])
def test_meta_saliency_refuses_a_meta_method_inside(model, inner):
    import functools

    from normgrad.registry import get_method

    method = {"registry meta": get_method("meta"), "meta_saliency": ng.meta_saliency,
              "partial of meta_saliency": functools.partial(ng.meta_saliency, lr=0.1)}[inner]  # fmt: skip
    with pytest.raises(ng.NormGradError, match="cannot wrap another meta-saliency"):
        ng.meta_saliency(model, torch.randn(1, 3, 20, 18), method=method, layers=["features.3"])


@pytest.mark.parametrize("lr", [1e308, 3.5e38, 10**400, float("inf"), float("nan"), -1.0, True])
def test_lr_outside_float32_range_is_refused_up_front(model, lr):
    from normgrad.registry import get_method

    with pytest.raises(ng.NormGradError, match="lr must be a finite number"):
        ng.meta_saliency(model, torch.randn(1, 3, 20, 18), lr=lr, layers=["features.3"])
    with pytest.raises(ng.NormGradError, match="lr must be a finite number"):
        get_method("meta", lr=lr)


@pytest.mark.parametrize("steps", [101, 10**6, 2.5, -1, float("nan")])
def test_steps_are_bounded(model, steps):
    with pytest.raises(ng.NormGradError, match="steps must be an integer from 0 to 100"):
        ng.meta_saliency(model, torch.randn(1, 3, 20, 18), lr=0.1, steps=steps, layers=["features.3"])


def test_a_hundred_tiny_steps_are_accepted(model):
    maps = ng.meta_saliency(model, torch.randn(1, 3, 20, 18), lr=1e-30, steps=100, layers=["features.3"])
    assert torch.isfinite(maps["features.3"]).all()
