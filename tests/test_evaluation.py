"""Evaluation metrics and the meta-saliency study, on small inputs."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from normgrad.evaluation.meta_effect import meta_effect, summarise
from normgrad.evaluation.metrics import spearman, ssim
from normgrad.models import LoadedModel, Preprocess


def test_spearman_is_the_rank_correlation():
    a = torch.rand(1, 1, 6, 5)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, a**3 + 2) == pytest.approx(1.0)  # ranks only
    b = torch.rand(1, 1, 6, 5)
    assert spearman(a, b) == pytest.approx(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)
    assert spearman(a - 0.5, -(a - 0.5), absolute=True) == pytest.approx(1.0)
    assert math.isnan(spearman(torch.ones(4, 4), a[0, 0, :4, :4]))


def test_ssim():
    a = np.random.default_rng(0).random((16, 16))
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, 3 * a + 1) == pytest.approx(1.0)  # normalised first
    assert ssim(a, np.random.default_rng(1).random((16, 16))) < 0.5
    assert math.isnan(ssim(np.ones((2, 2)), np.ones((2, 2))))


def test_meta_effect_records_and_first_order_symmetry():
    """At a tiny lr the adversarial change is the opposite of the meta change (a smooth model: tanh)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Conv2d(6, 6, 3, stride=2, padding=1),
        torch.nn.Tanh(),
        torch.nn.Conv2d(6, 6, 3, stride=2, padding=1),
        torch.nn.Tanh(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, 4),
    ).double()
    loaded = LoadedModel("tiny", model, Preprocess(size=32), [f"c{i}" for i in range(4)])
    from PIL import Image

    photo = Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8))
    preprocess = loaded.preprocess
    loaded.preprocess = lambda image: preprocess(image).double()
    records = meta_effect(loaded, {"noise": photo}, lrs=(1e-4,))  # maps are float32: a smaller change hits rounding
    assert {r["layer"] for r in records} == {"5", "combined"}  # the one stride-4 layer, and the combination
    for r in records:
        if r["layer"] != "combined":
            assert r["rho_plain_meta"] > 0.99
            assert r["rho_delta_meta_delta_adversarial"] < -0.99
    assert "| NormGrad | 0.0001 | 5 |" in summarise(records)
