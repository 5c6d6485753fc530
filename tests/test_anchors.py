"""pytorch-grad-cam's anchors as the faithfulness study runs them: the same maps, the model left as it was."""

import pytest
import torch
from torch import nn

import normgrad as ng
from normgrad.errors import NormGradError
from normgrad.evaluation.faithfulness.anchors import ANCHORS, anchor_maps

pytest.importorskip("pytorch_grad_cam")


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )  # fmt: skip


def test_hirescam_at_full_resolution_is_normgrads_gradient_times_activation():
    """HiResCAM's map is ReLU(Σ_c g a), min-max scaled: normgrad's scaling+sum, at a stride-1 layer (no resizing)."""
    model, x, y = net().eval(), torch.randn(3, 3, 16, 16), torch.tensor([0, 2, 4])
    theirs = anchor_maps("HiResCAM", model, x, y, ["1"])
    ours = ng.saliency(model, x, y, layers=["1"], extract="scaling", aggregate="sum")["1"].clamp_min(0)
    assert torch.allclose(theirs, ng.normalize(ours), atol=1e-5)


@pytest.mark.parametrize("name", ANCHORS)
def test_every_anchor_gives_input_sized_maps_and_leaves_the_model_as_it_was(name):
    model = net().train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    maps = anchor_maps(name, model, torch.randn(2, 3, 16, 16), torch.tensor([1, 3]), ["1", "3"])
    assert maps.shape == (2, 1, 16, 16) and float(maps.min()) >= 0 and float(maps.max()) <= 1 + 1e-6
    assert all(m.training for m in model.modules())
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_unknown_anchor_or_layer_is_one_clear_error():
    with pytest.raises(NormGradError, match="did you mean 'RefineCAM'"):
        anchor_maps("RefinedCAM", net(), torch.randn(1, 3, 16, 16), torch.tensor([0]), ["1"])
    with pytest.raises(NormGradError, match="unknown"):
        anchor_maps("GradCAM", net(), torch.randn(1, 3, 16, 16), torch.tensor([0]), ["nope"])
