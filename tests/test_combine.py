"""Combining layers: upsample, normalise per sample, combine."""

import pytest
import torch
import torch.nn.functional as F

import normgrad as ng


def test_normalize_per_sample():
    m = torch.stack([torch.arange(4.0).view(1, 2, 2), 10 + 2 * torch.arange(4.0).view(1, 2, 2)])
    out = ng.normalize(m)
    expected = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]).view(1, 1, 2, 2).expand(2, 1, 2, 2)
    torch.testing.assert_close(out, expected)
    assert torch.equal(ng.normalize(torch.ones(1, 1, 3, 3)), torch.zeros(1, 1, 3, 3))


def test_combine_modes_against_their_formulas():
    a, b = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 8, 8)
    size = (16, 16)
    na = ng.normalize(F.interpolate(a, size=size, mode="bilinear", align_corners=False))
    nb = ng.normalize(F.interpolate(b, size=size, mode="bilinear", align_corners=False))
    torch.testing.assert_close(ng.combine({"a": a, "b": b}, size), na * nb)
    torch.testing.assert_close(ng.combine([a, b], size, "geometric", [1, 3]), na**0.25 * nb**0.75)
    torch.testing.assert_close(ng.combine({"a": a, "b": b}, size, "sum", {"a": 2, "b": 2}), 0.5 * na + 0.5 * nb)
    out = ng.combine([a, b], size, "sum")
    assert out.shape == (2, 1, 16, 16) and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="mean"), "unknown combine mode"),
        (dict(mode="sum", weights=[1.0]), "1 weights for 2 maps"),
        (dict(mode="sum", weights=[-1.0, 2.0]), "non-negative"),
    ],
)
def test_combine_errors(kwargs, message):
    with pytest.raises(ng.NormGradError, match=message):
        ng.combine([torch.rand(1, 1, 2, 2), torch.rand(1, 1, 3, 3)], (4, 4), **kwargs)
    with pytest.raises(ng.NormGradError, match=r"\(N, 1, h, w\)"):
        ng.combine([torch.rand(1, 2, 2)], (4, 4))
