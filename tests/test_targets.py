"""Targets: classes, per-sample lists, callables, the training loss, intermediate units."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normgrad as ng
from conftest import SmallNet, randomize_batchnorm


@pytest.fixture
def model():
    return randomize_batchnorm(SmallNet()).eval()


def reference(model, x, objective, layer="features.3"):
    """‖∂J/∂a‖·‖a‖ by plain autograd, the objective given as a function of (output, activation)."""
    store = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: store.update(a=o.clone()))
    try:
        x = x.clone().requires_grad_()
        out = model(x)
    finally:
        handle.remove()
    act = store["a"]
    # recompute from a clone to get ∂J/∂a
    a = act.detach().requires_grad_()
    tail = nn.Sequential(*list(model.features)[4:])
    out = model.classifier(model.pool(tail(a.clone())).flatten(1))
    (g,) = torch.autograd.grad(objective(out, a).sum(), [a])
    return (g.norm(dim=1) * a.norm(dim=1))[:, None]


def test_default_target_is_the_predicted_class(model):
    x = torch.randn(3, 3, 20, 18)
    predicted = model(x).argmax(1)
    torch.testing.assert_close(
        ng.normgrad(model, x, layers="features.3")["features.3"], ng.normgrad(model, x, predicted, layers="features.3")["features.3"]
    )


@pytest.mark.parametrize("spec", [2, [2, 4, 6], (2, 4, 6), torch.tensor([2, 4, 6]), torch.tensor(5)])
def test_class_targets(model, spec):
    x = torch.randn(3, 3, 20, 18)
    classes = torch.as_tensor(spec).expand(3)
    expected = reference(model, x, lambda out, a: out.gather(1, classes[:, None])[:, 0])
    torch.testing.assert_close(ng.normgrad(model, x, spec, layers="features.3")["features.3"], expected, rtol=1e-4, atol=1e-6)


def test_callable_target(model):
    x = torch.randn(2, 3, 20, 18)
    fn = lambda out: out.softmax(1)[:, 1] - out[:, 0]  # noqa: E731
    expected = reference(model, x, lambda out, a: fn(out))
    torch.testing.assert_close(ng.normgrad(model, x, fn, layers="features.3")["features.3"], expected, rtol=1e-4, atol=1e-6)


def test_training_loss_target(model):
    x = torch.randn(2, 3, 20, 18)
    labels = torch.tensor([1, 6])
    expected = reference(model, x, lambda out, a: -F.cross_entropy(out, labels, reduction="none"))
    got = ng.saliency(model, x, ng.TrainingLoss(labels), layers="features.3", aggregate="norm")["features.3"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # signed aggregates follow dJ/da with J = -CE: the negated map of +CE
    plus = ng.saliency(
        model, x, lambda out: F.cross_entropy(out, labels, reduction="none"), layers="features.3", extract="scaling", aggregate="sum"
    )
    minus = ng.saliency(model, x, ng.TrainingLoss(labels), layers="features.3", extract="scaling", aggregate="sum")
    torch.testing.assert_close(minus["features.3"], -plus["features.3"])
    predicted = ng.normgrad(model, x, ng.TrainingLoss(), layers="features.3")["features.3"]
    torch.testing.assert_close(predicted, ng.normgrad(model, x, ng.TrainingLoss(model(x).argmax(1)), layers="features.3")["features.3"])


def test_unit_target(model):
    x = torch.randn(2, 3, 20, 18)
    store = {}
    handle = model.features[7].register_forward_hook(lambda m, i, o: store.update(o=o))
    try:
        xr = x.clone().requires_grad_()
        model(xr)
    finally:
        handle.remove()
    # the units' gradients with respect to the input image, by plain autograd
    (g_at,) = torch.autograd.grad(store["o"][:, 4, 1, 2].sum(), [xr], retain_graph=True)
    (g_mean,) = torch.autograd.grad(store["o"][:, 4].mean((1, 2)).sum(), [xr])
    got = ng.normgrad(model, x, ng.Unit("features.7", 4, (1, 2)), layers="input")["input"]
    torch.testing.assert_close(got, (g_at.norm(dim=1) * x.norm(dim=1))[:, None], rtol=1e-4, atol=1e-7)
    mean_unit = ng.saliency(model, x, ng.Unit("features.7", 4), layers="input", extract="bias", aggregate="sum")["input"]
    torch.testing.assert_close(mean_unit, g_mean.sum(1, keepdim=True), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "target, message",
    [
        (7, "class 7 is out of range: the model has 7 classes"),
        (-1, "out of range"),
        ([1, 2, 3], "3 classes for a batch of 2"),
        (1.5, "must be None, an int"),
        (torch.tensor([0.0, 1.0]), "must be integers"),
        (lambda out: out, r"one score per sample, shape \(2,\)"),
        (ng.Unit("features.7", 2, (50, 0)), "outside"),
        (ng.Unit("nope", 0), "unknown layer 'nope'"),
        (ng.TrainingLoss([9, 9]), "TrainingLoss labels class 9 is out of range"),
    ],
)
def test_target_errors(model, target, message):
    with pytest.raises(ng.NormGradError, match=message):
        ng.normgrad(model, torch.randn(2, 3, 20, 18), target, layers="features.3")


def test_dense_output_needs_a_region_or_a_callable():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ng.NormGradError, match="Pass a Region target .* or a callable target"):
        ng.normgrad(model, torch.randn(1, 3, 8, 8), layers="0")
    maps = ng.normgrad(model, torch.randn(1, 3, 8, 8), lambda out: out[:, 0].mean((1, 2)), layers="input")
    assert maps["input"].shape == (1, 1, 8, 8)
