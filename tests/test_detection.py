"""Detection: maps of torchvision detectors' detections, on the photo's pixel grid."""

import pytest
import torch
import torch.nn.functional as F

from conftest import DETECTOR_OPTIONS, torchvision_detector
from normgrad import NormGradError
from normgrad import detection as det
from normgrad.detection.geometry import map_to_photo

PHOTO = (90, 120)  # seen by the detectors at 120 × 160 (min_size 128, max_size 160), padded to 128 × 160


@pytest.fixture(scope="module")
def fcos():
    return torchvision_detector("fcos_resnet50_fpn")


@pytest.fixture(scope="module")
def faster():
    return torchvision_detector("fasterrcnn_resnet50_fpn")


@pytest.fixture
def photos():
    generator = torch.Generator().manual_seed(3)
    return torch.rand(2, 3, *PHOTO, generator=generator)


def top_detection(model, photos):
    """Each photo's best-scoring detection whose box has sides of 4 px or more (random weights also find empty boxes)."""
    found = det.detect(model, photos)
    first = [int(torch.nonzero((f["boxes"][:, 2:] - f["boxes"][:, :2] >= 4).all(1))[0]) for f in found]
    return torch.stack([f["boxes"][i] for f, i in zip(found, first)]), torch.stack([f["labels"][i] for f, i in zip(found, first)]), found


def hook_maps(model, photos, target, names):
    """An independent reference: the full model (its own transform) with forward hooks, autograd, ‖g_u‖·‖a_u‖ over channels."""
    outputs = {}
    handles = [model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o)) for name in names]
    try:
        output = model(list(photos))
    finally:
        for handle in handles:
            handle.remove()
    grads = torch.autograd.grad(target(output).sum(), [outputs[name] for name in names])
    return {name: grad.norm(dim=1, keepdim=True) * outputs[name].norm(dim=1, keepdim=True) for name, grad in zip(names, grads)}


# The mapping back to the photo


def test_a_map_is_carried_to_the_photo_by_the_resize_scale_and_without_the_padding():
    # Photo 8 × 12 resized ×2 to 16 × 24, padded to 16 × 32; the map has 2 × 4 cells of 8 px.
    # Pixel centre y + ½ is at (y + ½)·2 resized px, at cell coordinate (y + ½)/4 − ½ (clamped to the cells).
    # The map is 10·row + 4·col, linear along each axis, so bilinear sampling returns 10·m(y) + 4·m(x) exactly.
    cells = torch.tensor([[0.0, 4.0, 8.0, 12.0], [10.0, 14.0, 18.0, 22.0]])[None, None]
    mapped = map_to_photo(cells, resized=(16, 24), padded=(16, 32), photo=(8, 12))
    rows = torch.tensor([0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1]) * 10
    cols = torch.tensor([0, 0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5])  # 4·clamp(x − 1.5)/4: cell 3 is padding
    assert mapped.shape == (1, 1, 8, 12)
    torch.testing.assert_close(mapped[0, 0], rows[:, None] + cols[None, :])


def test_without_a_resize_the_mapping_is_upsampling_to_the_padded_size_then_cropping():
    cells = torch.rand(2, 1, 5, 7)
    mapped = map_to_photo(cells, resized=(37, 50), padded=(40, 56), photo=(37, 50))
    reference = F.interpolate(cells, size=(40, 56), mode="bilinear", align_corners=False)[..., :37, :50]
    torch.testing.assert_close(mapped, reference)


def test_the_resized_geometry_is_the_detectors_own(fcos, photos):
    resized = det.resize(fcos, photos)
    assert resized.image_sizes == [(120, 160), (120, 160)] and resized.padded_size == (128, 160)
    assert resized.photo_sizes == [PHOTO, PHOTO]


# Layers: the pyramid levels


def test_the_pyramid_levels_are_the_fpn_outputs_and_p6_p7(fcos):
    levels, missing = det.pyramid_levels(fcos)
    assert levels == [*(f"backbone.fpn.layer_blocks.{i}" for i in range(3)), "backbone.fpn.extra_blocks.p6", "backbone.fpn.extra_blocks.p7"]
    assert missing == []


def test_faster_rcnn_pool_level_is_named_as_having_no_module(faster):
    levels, missing = det.pyramid_levels(faster)
    assert levels == [f"backbone.fpn.layer_blocks.{i}" for i in range(4)] and missing == ["pool"]


# Maps


def test_maps_of_one_detection_lie_on_the_padded_grid_and_on_the_photo(fcos, photos):
    boxes, labels, _ = top_detection(fcos, photos[:1])
    maps = det.saliency(fcos, photos[:1], det.DetectionScore(boxes, labels))
    strides = {"backbone.fpn.layer_blocks.0": 8, "backbone.fpn.layer_blocks.1": 16, "backbone.fpn.layer_blocks.2": 32}
    for name, stride in strides.items():
        assert maps.levels[name].shape == (1, 1, 128 // stride, 160 // stride)
        assert maps.photo[name].shape == (1, 1, *PHOTO)
    assert maps.levels["backbone.fpn.extra_blocks.p7"].shape == (1, 1, 1, 2)
    assert all(bool(torch.isfinite(m).all()) for m in maps.photo.values())
    used = [name for name, m in maps.levels.items() if float(m.max()) > 0]
    assert len(used) == 1  # one location of one level scores a one-stage detection
    level = maps.photo[used[0]]
    assert float(level.std()) > 0.05 * float(level.max())  # informative: not constant
    combined = maps.combined()
    assert combined.shape == (1, 1, *PHOTO) and float(combined.min()) == 0.0 and float(combined.max()) == 1.0


def test_a_two_stage_detection_is_explained_at_the_level_its_box_is_pooled_from(faster, photos):
    boxes, labels, _ = top_detection(faster, photos[:1])
    maps = det.saliency(faster, photos[:1], det.DetectionScore(boxes, labels))
    used = [name for name, m in maps.levels.items() if float(m.max()) > 0]
    assert len(used) == 1
    combined = maps.combined("product")  # the levels without gradient are left out, not multiplied in
    assert float(combined.max()) == 1.0


def test_a_batch_equals_its_items(fcos, photos):
    boxes, labels, _ = top_detection(fcos, photos)
    batch = det.saliency(fcos, photos, det.DetectionScore(boxes, labels))
    for i in range(2):
        item = det.saliency(fcos, photos[i : i + 1], det.DetectionScore(boxes[i], int(labels[i])))
        for name in batch.photo:
            torch.testing.assert_close(
                batch.photo[name][i : i + 1], item.photo[name], rtol=1e-4, atol=1e-6 * float(item.photo[name].max()) + 1e-12
            )


def test_maps_agree_with_hooks_and_autograd_at_two_fpn_levels(fcos, photos):
    target = det.AllDetections(min_score=0.0)
    maps = det.saliency(fcos, photos, target)
    used = [name for name, m in maps.levels.items() if float(m.flatten(1).amax(1).min()) > 0]
    assert len(used) >= 2
    reference = hook_maps(fcos, photos, target, used[:2])
    for name in used[:2]:
        torch.testing.assert_close(maps.levels[name], reference[name], rtol=1e-4, atol=1e-7 * float(reference[name].detach().max()))


def test_the_model_is_left_exactly_as_it_was(fcos, photos):
    boxes, labels, _ = top_detection(fcos, photos[:1])
    state = {k: v.clone() for k, v in fcos.state_dict().items()}
    fcos.train()
    fcos.backbone.body.eval()  # a mixed state must come back as it was
    flags = {name: module.training for name, module in fcos.named_modules()}
    transform, children = fcos.transform, dict(fcos.named_children())
    try:
        det.saliency(fcos, photos[:1], det.DetectionScore(boxes, labels))
        assert {name: module.training for name, module in fcos.named_modules()} == flags
        assert fcos.transform is transform and dict(fcos.named_children()) == children
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in fcos.modules())
        assert all(p.grad is None and p.requires_grad for p in fcos.parameters())
        assert all(torch.equal(v, state[k]) for k, v in fcos.state_dict().items())
    finally:
        fcos.eval()


# Targets


def test_a_detection_target_scores_the_detection_it_matches(fcos, photos):
    _, _, found = top_detection(fcos, photos[:1])
    sides = found[0]["boxes"][:, 2:] - found[0]["boxes"][:, :2]
    index = int(sides.prod(1).argmax())  # the largest box, not the top score: matching decides
    assert index != 0
    box, label = found[0]["boxes"][index] + 0.1, int(found[0]["labels"][index])  # a box close to, not equal to, the detection's
    target = det.DetectionScore(box, label, min_iou=0.8)
    with torch.no_grad():
        output = fcos(list(photos[:1]))
    matched = target.matches(output)[0]
    assert float(det.box_iou(found[0]["boxes"][matched : matched + 1], box)[0]) >= 0.8
    assert int(found[0]["labels"][matched]) == label
    torch.testing.assert_close(target(output), found[0]["scores"][matched : matched + 1])


def test_a_box_that_no_detection_overlaps_is_one_clear_error(fcos, photos):
    with pytest.raises(NormGradError, match="image 0: no detection of class 1 overlaps the box"):
        det.saliency(fcos, photos[:1], det.DetectionScore((0, 0, 1, 1), 1, min_iou=0.9))


def test_a_class_without_detections_is_an_error_not_a_blank_map(fcos, photos):
    with pytest.raises(NormGradError, match="no detection of class 7"):
        det.saliency(fcos, photos[:1], det.ClassDetections(7))
    with pytest.raises(NormGradError, match="no detection scoring ≥ 2"):
        det.saliency(fcos, photos[:1], det.AllDetections(min_score=2.0))


def test_the_sum_over_a_class_is_the_sum_of_its_scores(fcos, photos):
    _, labels, found = top_detection(fcos, photos[:1])
    with torch.no_grad():
        output = fcos(list(photos[:1]))
    label = int(labels[0])
    expected = found[0]["scores"][found[0]["labels"] == label].sum()
    torch.testing.assert_close(det.ClassDetections(label)(output), expected[None])


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (lambda: det.DetectionScore((5, 5, 2, 9), 1), "x1 ≥ x0"),
        (lambda: det.DetectionScore((0, 0, 4, 4), 1, min_iou=0), "min_iou"),
        (
            lambda: det.DetectionScore([(0, 0, 4, 4)] * 3, 1)([{"boxes": torch.zeros(0, 4), "labels": [], "scores": []}]),
            "one such box per image",
        ),
        (lambda: det.AllDetections()(torch.zeros(1, 5)), "list of dicts"),
    ],
)
def test_bad_targets_are_refused(target, message):
    with pytest.raises(NormGradError, match=message):
        target()


def test_a_classifier_or_bad_photos_are_refused(fcos, small_net):
    with pytest.raises(NormGradError, match="not a torchvision detector"):
        det.saliency(small_net, torch.rand(1, 3, 32, 32), det.AllDetections())
    with pytest.raises(NormGradError, match=r"photos must be a float tensor \(N, 3, H, W\)"):
        det.saliency(fcos, torch.rand(3, 32, 32), det.AllDetections())
    with pytest.raises(NormGradError, match=r"RGB values in \[0, 1\] \(the detector normalises them itself\)"):
        det.detect(fcos, torch.randn(1, 3, 32, 32))  # ImageNet-normalised pixels would be normalised twice


# Every torchvision detector


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(DETECTOR_OPTIONS))
def test_every_torchvision_detector_explains_its_top_detection(arch):
    model = torchvision_detector(arch)
    photos = torch.rand(1, 3, *PHOTO, generator=torch.Generator().manual_seed(1))
    levels, _ = det.pyramid_levels(model)
    assert len(levels) >= 2
    boxes, labels, _ = top_detection(model, photos)
    maps = det.saliency(model, photos, det.DetectionScore(boxes, labels))
    assert list(maps.levels) == levels
    assert all(m.shape == (1, 1, *PHOTO) and bool(torch.isfinite(m).all()) for m in maps.photo.values())
    assert float(maps.combined().max()) == 1.0
    reference = hook_maps(model, photos, det.DetectionScore(boxes, labels), levels[:2])
    for name in levels[:2]:  # float32 through a whole detector: differences of 1e-6 of the map's maximum are rounding
        scale = float(reference[name].detach().max())
        torch.testing.assert_close(maps.levels[name], reference[name], rtol=1e-4, atol=1e-5 * scale + 1e-30)


def test_a_combination_without_any_gradient_warns_that_it_is_blank(fcos, photos):
    boxes, labels, _ = top_detection(fcos, photos[:1])
    maps = det.saliency(fcos, photos[:1], det.DetectionScore(boxes, labels))
    unused = {name: m for name, m in maps.levels.items() if float(m.max()) == 0}
    blank = det.DetectionMaps(unused, {name: maps.photo[name] for name in unused}, maps.resized)
    with pytest.warns(UserWarning, match=r"image\(s\) \[0\]: every selected layer's map is zero"):
        assert float(blank.combined().max()) == 0.0


def test_the_engine_called_directly_on_a_detector_gives_the_same_level_maps(fcos):
    import normgrad as ng

    photos = torch.rand(2, 3, 12, 15, generator=torch.Generator().manual_seed(4))  # upsampled inside: P3 (16 × 20) > the photo
    target = det.AllDetections(min_score=0.0)
    levels = ["backbone.fpn.layer_blocks.0", "backbone.fpn.layer_blocks.1"]
    direct = ng.normgrad(fcos, photos, target, layers=levels)  # the photo in, the model's own transform inside
    maps = det.saliency(fcos, photos, target, layers=levels)
    for name in levels:
        torch.testing.assert_close(direct[name], maps.levels[name], rtol=1e-4, atol=1e-6 * float(direct[name].max()))
