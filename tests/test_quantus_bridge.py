"""normgrad inside Quantus: the explain_func returns normgrad's maps, and Quantus metrics run on them."""

import numpy as np
import pytest
import torch
from torch import nn

import normgrad as ng
from normgrad.errors import NormGradError

quantus = pytest.importorskip("quantus")
from normgrad.quantus import explain_func  # noqa: E402

LAYERS = ["features.1", "features.3"]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.features(x))


def data(count: int = 4):
    generator = np.random.default_rng(0)
    return generator.random((count, 3, 16, 16)).astype(np.float32), np.array([0, 1, 2, 3][:count])


def test_the_explain_func_returns_normgrads_own_maps():
    model, (x, y) = Net().eval(), data()
    maps = explain_func(model=model, inputs=x, targets=y, method="normgrad", layers=LAYERS)
    expected = ng.combine(ng.normgrad(model, torch.from_numpy(x), torch.from_numpy(y), layers=LAYERS), size=(16, 16))
    assert maps.shape == (4, 1, 16, 16) and maps.dtype == np.float32
    assert np.allclose(maps, expected.numpy(), atol=1e-6)
    gradient = explain_func(model=model, inputs=x, targets=y, method="gradient")
    assert gradient.shape == (4, 1, 16, 16) and not np.allclose(gradient, maps)


@pytest.mark.parametrize("method", ["normgrad", "gradient"])
def test_three_quantus_metrics_run_on_normgrad_and_a_baseline(method):
    model, (x, y) = Net().eval(), data()
    kwargs = {"method": method, "layers": LAYERS} if method == "normgrad" else {"method": method}
    common = {"model": model, "x_batch": x, "y_batch": y, "explain_func": explain_func, "explain_func_kwargs": kwargs, "device": "cpu"}
    metrics = [
        quantus.FaithfulnessCorrelation(
            nr_runs=5, subset_size=16, return_aggregate=False, disable_warnings=True, display_progressbar=False
        ),
        quantus.Sparseness(disable_warnings=True, display_progressbar=False),
        quantus.MaxSensitivity(nr_samples=3, disable_warnings=True, display_progressbar=False),
    ]
    for metric in metrics:
        scores = np.asarray(metric(**common), dtype=float)
        assert scores.shape == (4,) and np.isfinite(scores).all()
    # what Quantus measured is normgrad's map: passing the maps themselves gives the same sparseness
    a_batch = explain_func(model=model, inputs=x, targets=y, **kwargs)
    direct = quantus.Sparseness(disable_warnings=True, display_progressbar=False)(
        model=model, x_batch=x, y_batch=y, a_batch=a_batch, device="cpu"
    )
    assert np.allclose(direct, quantus.Sparseness(disable_warnings=True, display_progressbar=False)(**common))


def test_the_default_rule_and_meta_run_through_the_bridge():
    model, (x, y) = Net().eval(), data(2)
    assert explain_func(model=model, inputs=x, targets=y, method="meta", layers=LAYERS).shape == (2, 1, 16, 16)


def test_bad_input_is_one_clear_error():
    model, (x, y) = Net().eval(), data()
    with pytest.raises(NormGradError, match="one target per input"):
        explain_func(model=model, inputs=x, targets=y[:3], method="gradient")
    with pytest.raises(NormGradError, match="unknown method"):
        explain_func(model=model, inputs=x, targets=y, method="normgrd")
