"""The planted-shortcut data set: where the patch lies, what it encodes, which images carry it, and determinism."""

import pytest
import torch

from normgrad.errors import NormGradError
from normgrad.evaluation.shortcut import KINDS, PATTERN_CODES, patch_origin, plant_shortcut, stamp


def garments(count: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 200, (count, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % 10
    return images, labels


def test_the_planted_share_is_exact_and_only_those_images_change():
    images, labels = garments()
    data = plant_shortcut(images, labels, share=0.3, seed=1)
    assert int(data.has_patch.sum()) == 60
    changed = (data.images != images).flatten(1).any(1)
    assert not changed[~data.has_patch].any()
    assert torch.equal(data.labels, labels)
    assert not data.mask[~data.has_patch].any()
    assert torch.equal(data.images[~data.mask.squeeze(1)], images[~data.mask.squeeze(1)])  # nothing outside the patch moves


@pytest.mark.parametrize("kind", KINDS)
def test_each_patched_image_carries_its_own_labels_patch(kind):
    images, labels = garments()
    data = plant_shortcut(images, labels, share=1.0, seed=0, kind=kind)
    for i in range(len(data)):
        top, left = patch_origin(int(labels[i]), kind, 28, 28)
        expected = torch.zeros(28, 28, dtype=torch.bool)
        expected[top : top + 4, left : left + 4] = True  # a literal 4×4 square at the class's place
        assert torch.equal(data.mask[i, 0], expected)
        patch = data.images[i, top : top + 4, left : left + 4]
        if kind == "position":
            assert (patch == 255).all()
        else:
            bits = [(PATTERN_CODES[int(labels[i])] >> (4 * r + c)) & 1 for r in range(4) for c in range(4)]
            assert patch.flatten().tolist() == [255 * b for b in bits]


def test_patches_identify_the_class():
    """Ten positions that never overlap; ten patterns at one place, each lighting 8 of 16 pixels, pairwise distinct."""
    classes = torch.arange(10)
    blank = torch.zeros(10, 28, 28, dtype=torch.uint8)
    _, masks = stamp(blank, classes, "position")
    assert int(masks.sum(0).max()) == 1 and int(masks.sum()) == 160
    patterns, masks = stamp(blank, classes, "pattern")
    assert masks.all(0).sum() == 16  # one place for every class
    lit = (patterns > 0).flatten(1)
    assert lit.sum(1).tolist() == [8] * 10
    distances = (lit[:, None] ^ lit[None]).sum(-1)
    assert int((distances + 16 * torch.eye(10, dtype=torch.long)).min()) >= 8


def test_same_inputs_same_result_and_the_callers_rng_untouched():
    images, labels = garments()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = plant_shortcut(images, labels, 0.5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = plant_shortcut(images, labels, 0.5, seed=3)
    c = plant_shortcut(images, labels, 0.5, seed=4)
    assert all(torch.equal(x, y) for x, y in ((a.images, b.images), (a.mask, b.mask), (a.has_patch, b.has_patch)))
    assert not torch.equal(a.has_patch, c.has_patch)


def test_the_input_images_are_not_modified():
    images, labels = garments()
    before = images.clone()
    plant_shortcut(images, labels, 1.0, seed=0)
    stamp(images, labels)
    assert torch.equal(images, before)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x, y: plant_shortcut(x, y, 1.5, 0), "share"),
        (lambda x, y: plant_shortcut(x, y, 0.5, 0, kind="positon"), "did you mean 'position'"),
        (lambda x, y: plant_shortcut(x.float(), y, 0.5, 0), "uint8"),
        (lambda x, y: plant_shortcut(x, y[:3], 0.5, 0), "one class per image"),
        (lambda x, y: plant_shortcut(x, y + 5, 0.5, 0), "0..9"),
        (lambda x, y: plant_shortcut(x[:, :10, :10], y, 0.5, 0), "at least"),
        (lambda x, y: stamp(x, y, "pattern", size=3), "16-bit"),
    ],
)
def test_bad_input_is_one_clear_error(call, message):
    images, labels = garments(20)
    with pytest.raises(NormGradError, match=message):
        call(images, labels)
