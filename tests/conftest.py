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
