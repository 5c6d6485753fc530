import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu_out = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu_out(out)


class SmallNet(nn.Module):
    """Strided, dilated, grouped, depthwise and 'same' convs, BatchNorm, pooling, a residual block and in-place ReLUs."""

    def __init__(self, num_classes: int = 7, inplace: bool = True) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(8, 8, 3, padding="same", groups=8, padding_mode="reflect"),
            nn.MaxPool2d(2),
            Residual(8),
            nn.Conv2d(8, 12, (3, 1), stride=(1, 2), padding=(1, 0)),
            nn.ReLU(inplace=inplace),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(12, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.fixture
def small_net() -> nn.Module:
    return randomize_batchnorm(SmallNet())


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for the browser tests (tests/web.py), one per test module."""
    from web import chromium

    driver = chromium()
    yield driver
    driver.quit()


DETECTOR_OPTIONS = {  # random weights score below torchvision's default thresholds: keep every detection
    "fasterrcnn_resnet50_fpn": {"box_score_thresh": 0.0},
    "fasterrcnn_resnet50_fpn_v2": {"box_score_thresh": 0.0},
    "fasterrcnn_mobilenet_v3_large_fpn": {"box_score_thresh": 0.0},
    "maskrcnn_resnet50_fpn": {"box_score_thresh": 0.0},
    "retinanet_resnet50_fpn": {"score_thresh": 0.0},
    "fcos_resnet50_fpn": {"score_thresh": 0.0},
    "ssdlite320_mobilenet_v3_large": {},
}


def torchvision_detector(arch: str, seed: int = 0) -> nn.Module:
    """A torchvision detector with random weights (5 classes), small internal sizes so that it runs fast on a CPU; eval mode."""
    import torchvision

    sizes = {} if arch.startswith("ssd") else {"min_size": 128, "max_size": 160}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=5, **sizes, **DETECTOR_OPTIONS[arch])
    return model.eval()


def prepared(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A model with lazy layers, materialised on ``x``, in float64 and eval mode (the brute-force formula tests)."""
    model(x)  # materialise the lazy layer
    return model.double().eval()
