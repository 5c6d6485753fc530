"""The batch size a run chooses on the CPU: as large as CPU_MAX while the estimate fits a share of the free memory."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from normgrad.models import LoadedModel, Preprocess
from normgrad.run import batch_size


def loaded_model() -> LoadedModel:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    return LoadedModel("toy", model.eval(), Preprocess(size=32, max_size=64), [str(i) for i in range(10)])


@pytest.mark.parametrize("images_that_fit, expected", [(0.5, 1), (2.5, 2), (100, batch_size.CPU_MAX)])
def test_cpu_batch_fits_a_share_of_the_available_memory(monkeypatch, images_that_fit, expected):
    loaded = loaded_model()
    setup = SimpleNamespace(preprocess=loaded.preprocess)
    example = torch.zeros(1, 3, *batch_size.largest_input(loaded.preprocess))
    per_image = batch_size.BACKWARD_FACTOR * batch_size.activation_bytes(loaded.model, example)
    available = images_that_fit * per_image / batch_size.CPU_MEMORY_SHARE
    monkeypatch.setattr(batch_size, "available_memory", lambda: int(available))
    assert batch_size.choose_batch_size(loaded, SimpleNamespace(needs_model=True), setup, "cpu") == expected


def test_activation_bytes_count_every_leaf_output():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval()
    assert batch_size.activation_bytes(model, torch.zeros(1, 3, 5, 7)) == 2 * 4 * 5 * 7 * 4


def test_available_memory_is_positive():
    assert batch_size.available_memory() > 0
