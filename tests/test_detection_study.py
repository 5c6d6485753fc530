"""Evidence: on synthetic photos with known boxes, the map of a detection lies on its box."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from normgrad import detection as det
from normgrad.evaluation import detection_study as study
from normgrad.evaluation import synthetic_boxes

STEPS = 150  # about 45 s on one CPU thread, once: the weights are kept in pytest's cache


@pytest.fixture(scope="module")
def trained(request):
    """The small FCOS trained on synthetic boxes (cached across runs in .pytest_cache, keyed by the task's source)."""
    source = hashlib.sha256(Path(synthetic_boxes.__file__).read_bytes()).hexdigest()[:12]
    path = request.config.cache.mkdir("normgrad-detection") / f"fcos-{STEPS}-{source}.pth"
    model = synthetic_boxes.small_fcos()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        with torch.random.fork_rng(devices=[]):
            synthetic_boxes.train(model, steps=STEPS)
        torch.save(model.state_dict(), path)
    return model.eval()


def test_the_scenes_are_seeded_and_their_boxes_hold_their_colour():
    first, again = synthetic_boxes.scenes(3, seed=5), synthetic_boxes.scenes(3, seed=5)
    for scene, same in zip(first, again):
        assert torch.equal(scene.photo, same.photo) and torch.equal(scene.boxes, same.boxes)
        for box, label in zip(scene.boxes.long(), scene.labels):
            x0, y0, x1, y1 = box.tolist()
            mean = scene.photo[:, y0:y1, x0:x1].mean(dim=(1, 2))
            assert int(mean.argmax()) == (0 if label == 1 else 1)  # red boxes are class 1, green ones class 2


def test_hit_and_mass_follow_their_definitions():
    plane = torch.zeros(1, 1, 6, 8)
    plane[0, 0, 2, 3] = 3.0  # the peak, inside the box
    plane[0, 0, 5, 7] = 1.0  # outside
    hit, mass = study.hit_and_mass(plane, torch.tensor([2.0, 1.0, 5.0, 4.0]))  # columns 2..4, rows 1..3
    assert hit == 1.0 and mass == pytest.approx(3.0 / 4.0)
    hit, mass = study.hit_and_mass(plane, torch.tensor([6.0, 4.0, 8.0, 6.0]))
    assert hit == 0.0 and mass == pytest.approx(1.0 / 4.0)


def test_wilson_intervals_are_scipys():
    from scipy.stats import binomtest

    for hits, n in ((22, 22), (3, 40), (0, 7), (17, 30)):
        interval = binomtest(hits, n).proportion_ci(method="wilson")
        ours = study.wilson(hits, n)
        assert ours["low"] == pytest.approx(interval.low, abs=1e-6) and ours["high"] == pytest.approx(interval.high, abs=1e-6)


def test_the_trained_detector_finds_the_boxes(trained):
    scenes = synthetic_boxes.scenes(8, seed=123)
    found = det.detect(trained, torch.stack([s.photo for s in scenes]))
    positives = sum(len(study.true_positives(f, s.boxes, s.labels, 0.3)) for f, s in zip(found, scenes))
    assert positives >= 0.7 * sum(len(s.boxes) for s in scenes)


def test_the_map_of_a_detection_lies_on_its_box(trained):
    hits, masses, areas, gradcam_masses = [], [], [], []
    for number, scene in enumerate(synthetic_boxes.scenes(8, seed=123)):
        found = det.detect(trained, scene.photo[None])[0]
        pairs = study.true_positives(found, scene.boxes, scene.labels, 0.3)
        if not pairs:
            continue
        chosen = [index for index, _ in pairs]
        maps = study.explain_photo(trained, scene.photo, found["boxes"][chosen], found["labels"][chosen], seed=number)
        for k, (_, truth) in enumerate(pairs):
            hit, mass = study.hit_and_mass(maps["normgrad"][k], scene.boxes[truth])
            hits.append(hit)
            masses.append(mass)
            gradcam_masses.append(study.hit_and_mass(maps["gradcam"][k], scene.boxes[truth])[1])
            areas.append(float(study.inside(scene.boxes[truth], 96, 96).double().mean()))
    assert len(hits) >= 8
    assert np.mean(hits) >= 0.8  # random: the box's share of the photo, about 0.05
    assert np.mean(masses) >= 3 * np.mean(areas)
    assert np.mean(masses) > np.mean(gradcam_masses)
