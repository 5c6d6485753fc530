"""``ng.influence`` and ``ng.self_influence``: the top proponents and opponents of each test image, with their maps."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import normgrad as ng
from conftest import SmallNet, randomize_batchnorm
from normgrad.errors import NormGradError
from normgrad.tracin import TracIn, pixel_map


@pytest.fixture
def data():
    model = randomize_batchnorm(SmallNet()).eval()
    train = (torch.randn(10, 3, 12, 12), torch.randint(0, 7, (10,)))
    return model, train, torch.randn(3, 3, 12, 12)


def test_proponents_and_opponents_are_the_extreme_scores(data):
    model, train, tests = data
    result = ng.influence(model, tests, train, layers=["features.3"], extract="layer", top_k=3, batch_size=4)
    tracin = TracIn(model, ["features.3"], extract="layer")
    expected = tracin.scores(*train, tracin.test_gradients(tests)).T
    torch.testing.assert_close(result.scores, expected)
    assert torch.equal(result.proponents, expected.topk(3, dim=1).indices)
    assert torch.equal(result.opponents, expected.topk(3, dim=1, largest=False).indices)
    assert (result.proponent_scores()[:, 0] >= result.opponent_scores()[:, 0]).all()


def test_each_map_is_its_pair_split_over_the_pixels(data):
    model, train, tests = data
    result = ng.influence(model, tests, TensorDataset(*train), layers=["features.2", "features.5"], top_k=2, batch_size=3)
    tracin = TracIn(model, ["features.2", "features.5"])
    test_gradients = tracin.test_gradients(tests)
    for t in range(len(tests)):
        for column, index in enumerate(result.opponents[t].tolist()):
            maps = tracin.maps(train[0][index : index + 1], train[1][index : index + 1], test_gradients).maps
            expected = pixel_map(maps, (12, 12))[0, t]
            torch.testing.assert_close(result.opponent_maps[t, column, 0], expected)


def test_self_influence_ranks_every_training_image(data):
    model, train, _ = data
    result = ng.self_influence(model, train, layers=["features.3"], extract="layer", top_k=4, batch_size=4)
    expected = TracIn(model, ["features.3"], extract="layer").self_influence(*train).scores
    torch.testing.assert_close(result.scores, expected)
    assert torch.equal(result.top, expected.topk(4).indices)
    assert result.maps.shape == (4, 1, 12, 12)


def test_top_k_is_bounded(data):
    model, train, tests = data
    with pytest.raises(NormGradError, match="top_k must be an integer"):
        ng.influence(model, tests, train, layers=["features.3"], top_k=0)
