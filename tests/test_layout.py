"""The run's input layout: channels-last batches for depthwise-heavy models on the CPU, where the model allows it."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import normgrad as ng
from normgrad.run.layout import depthwise_heavy, input_layout


def depthwise_net(blocks: int = 4) -> nn.Module:
    """A MobileNet-like classifier: a stem, then depthwise 3×3 + pointwise 1×1 blocks with BatchNorm."""
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
    for _ in range(blocks):
        layers += [nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


class FlattensWithView(nn.Module):
    """A depthwise net whose head flattens the feature map with ``view``: it refuses channels-last activations."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*list(depthwise_net())[:-3])
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(x.view(x.shape[0], -1))


class ReadsMemoryLayout(nn.Module):
    """A depthwise net whose output depends on its input's memory layout (what a channels-last batch must not change)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = depthwise_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + (0.0 if x.is_contiguous() else 1.0)


class RefusesSmallChannelsLast(nn.Module):
    """A depthwise net that refuses channels-last inputs narrower than 40 pixels (the layout probe's input is wider)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = depthwise_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous() and x.shape[-1] < 40:
            raise RuntimeError("view size is not compatible with input tensor's size and stride")
        return self.net(x)


def example() -> torch.Tensor:
    return torch.rand(1, 3, 32, 32)


def test_a_network_of_depthwise_convolutions_is_depthwise_heavy():
    assert depthwise_heavy(depthwise_net())


def test_a_network_of_dense_convolutions_is_not_depthwise_heavy():
    dense = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1) for i in range(6)])
    assert not depthwise_heavy(dense)


def test_a_network_with_layer_norms_is_not_depthwise_heavy():
    assert not depthwise_heavy(nn.Sequential(depthwise_net(), nn.LayerNorm(10)))


def test_a_depthwise_network_gets_channels_last_batches():
    assert input_layout(depthwise_net(), example()) == torch.channels_last


def test_a_dense_network_keeps_the_usual_layout():
    dense = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    assert input_layout(dense, example()) == torch.contiguous_format


def test_a_model_that_refuses_channels_last_keeps_the_usual_layout():
    model = FlattensWithView().eval()
    with pytest.raises(RuntimeError):
        model(example().contiguous(memory_format=torch.channels_last))
    assert input_layout(model, example()) == torch.contiguous_format


def test_a_model_whose_output_changes_with_the_layout_keeps_the_usual_layout():
    assert input_layout(ReadsMemoryLayout().eval(), example()) == torch.contiguous_format


def test_the_probe_leaves_the_model_in_its_mode():
    model = depthwise_net().train()
    input_layout(model, example())
    assert all(module.training for module in model.modules())


def run_maps(path, model) -> dict:
    result = ng.explain(str(path), model=model, method="normgrad", layers=["9", "15"], combine="none", verbose=False)
    (explained,) = result.images
    return explained.maps


def test_a_channels_last_run_gives_the_maps_of_the_usual_layout(tmp_path, monkeypatch):
    import normgrad.run.layout as layout

    model = depthwise_net()
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(path)
    chosen = []
    monkeypatch.setattr(layout, "input_layout", lambda *args: chosen.append(input_layout(*args)) or chosen[-1])
    channels_last = run_maps(path, model)
    monkeypatch.setattr(layout, "input_layout", lambda *args: torch.contiguous_format)
    usual = run_maps(path, model)
    assert chosen == [torch.channels_last]
    for layer in ("9", "15"):
        scale = float(np.abs(usual[layer]).max())
        assert scale > 0 and np.allclose(channels_last[layer], usual[layer], rtol=1e-4, atol=1e-6 * scale)


def test_a_model_refusing_a_channels_last_batch_the_probe_did_not_show_gets_the_usual_layout(tmp_path):
    model = RefusesSmallChannelsLast().eval()
    path = tmp_path / "narrow.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (36, 30, 3), dtype=np.uint8)).save(path)
    result = ng.explain(str(path), model=model, method="normgrad", layers=["net.9"], size=36, verbose=False)
    assert not result.failed and result.images[0].map.shape == (36, 30)
