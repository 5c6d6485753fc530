"""ROAD's imputation, ROAD, and insertion/deletion, each against a literal reference written from the definitions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normgrad.errors import NormGradError
from normgrad.evaluation.faithfulness.imputation import linear_imputation, noisy_linear_imputation
from normgrad.evaluation.faithfulness.insertion_deletion import causal_metric, rise_kernel
from normgrad.evaluation.faithfulness.pixels import PixelSpace
from normgrad.evaluation.faithfulness.road import road

SPACE = PixelSpace(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


def dense_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Literal: one equation per removed pixel, x_u = Σ w_n x_n / Σ w_n over the neighbours inside; dense solve."""
    channels, height, width = image.shape
    unknowns = [(y, x) for y in range(height) for x in range(width) if removed[y, x]]
    index = {p: k for k, p in enumerate(unknowns)}
    matrix = np.zeros((len(unknowns), len(unknowns)))
    rhs = np.zeros((len(unknowns), channels))
    for k, (y, x) in enumerate(unknowns):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy, dx) == (0, 0) or not (0 <= y + dy < height and 0 <= x + dx < width):
                    continue
                weight = 1 / 12 if dy and dx else 1 / 6
                matrix[k, k] += weight
                if removed[y + dy, x + dx]:
                    matrix[k, index[(y + dy, x + dx)]] -= weight
                else:
                    rhs[k] += weight * image[:, y + dy, x + dx]
    out = image.astype(np.float64).copy()
    solution = np.linalg.solve(matrix, rhs)
    for k, (y, x) in enumerate(unknowns):
        out[:, y, x] = solution[k]
    return out


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9, 0.99])
def test_imputation_matches_a_dense_solve(share):
    rng = np.random.default_rng(int(share * 100))
    image = rng.random((3, 9, 7))
    removed = rng.random((9, 7)) < share
    removed[0, 0] = False  # at least one known pixel
    assert np.allclose(linear_imputation(image, removed), dense_imputation(image, removed), atol=1e-10)


def test_imputed_pixels_are_the_weighted_mean_of_their_neighbours():
    rng = np.random.default_rng(1)
    image, removed = rng.random((2, 8, 8)), rng.random((8, 8)) < 0.4
    out = linear_imputation(image, removed)
    for y, x in zip(*np.nonzero(removed)):
        total, weights = 0.0, 0.0
        for dy, dx in [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)]:
            if 0 <= y + dy < 8 and 0 <= x + dx < 8:
                w = 1 / 12 if dy and dx else 1 / 6
                total, weights = total + w * out[:, y + dy, x + dx], weights + w
        assert np.allclose(out[:, y, x], total / weights)
    assert np.array_equal(out[:, ~removed], image[:, ~removed])


def test_a_constant_image_imputes_to_the_constant():
    image = np.stack([np.full((10, 12), 0.3), np.full((10, 12), 0.8)])
    removed = np.random.default_rng(0).random((10, 12)) < 0.7
    assert np.allclose(linear_imputation(image, removed), image, atol=1e-12)


def test_noise_lands_on_imputed_pixels_only_with_the_given_sigma():
    pixels = torch.rand(1, 3, 40, 40, dtype=torch.float64)
    removed = torch.rand(1, 1, 40, 40) < 0.5
    clean = noisy_linear_imputation(pixels, removed, noise=0.0)
    noisy = noisy_linear_imputation(pixels, removed, noise=0.01, generator=np.random.default_rng(0))
    difference = (noisy - clean)[removed.expand_as(pixels)]
    assert torch.equal(noisy[~removed.expand_as(pixels)], pixels[~removed.expand_as(pixels)])
    assert abs(float(difference.std()) - 0.01) < 0.001 and abs(float(difference.mean())) < 0.001


def test_imputation_agrees_with_pytorch_grad_cam():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    rng = np.random.default_rng(3)
    image, removed = rng.random((3, 12, 10)).astype(np.float32), rng.random((12, 10)) < 0.6
    theirs = NoisyLinearImputer(noise=0.0)(torch.from_numpy(image), torch.from_numpy((~removed).astype(np.float32)))
    assert np.allclose(linear_imputation(image, removed), theirs.numpy(), atol=1e-5)


def test_an_image_with_no_known_pixel_takes_its_mean_colour():
    image = np.random.default_rng(0).random((3, 5, 5))
    out = linear_imputation(image, np.ones((5, 5), bool))
    assert np.allclose(out, image.mean(axis=(1, 2), keepdims=True) * np.ones_like(image))


# ----------------------------------------------------------------------------- ROAD


def tiny_classifier(classes: int = 5) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(54, classes)).eval()


def batch(count: int = 3, side: int = 11):
    generator = torch.Generator().manual_seed(2)
    pixels = torch.rand(count, 3, side, side, generator=generator)
    maps = torch.rand(count, 1, side, side, generator=generator)  # distinct values: no ties
    return SPACE.to_inputs(pixels), maps, torch.tensor([0, 3, 4, 1, 2][:count])


def literal_probability(model, model_input: np.ndarray, target: int) -> float:
    with torch.no_grad():
        return float(F.softmax(model(torch.from_numpy(model_input)[None].float()).double(), 1)[0, target])


def test_road_matches_a_literal_loop():
    model = tiny_classifier()
    inputs, maps, targets = batch()
    fractions = (0.1, 0.45, 0.8)
    curves = road(model, inputs, maps, targets, space=SPACE, fractions=fractions, noise=0.0)
    mean, std = np.array(SPACE.mean)[:, None, None], np.array(SPACE.std)[:, None, None]
    for i in range(len(inputs)):
        pixels = inputs[i].double().numpy() * std + mean
        order = np.argsort(-maps[i, 0].numpy().ravel(), kind="stable")
        for f, fraction in enumerate(fractions):
            count = round(fraction * 121)
            for name, ranked in (("morf", order), ("lerf", order[::-1])):
                removed = np.zeros(121, bool)
                removed[ranked[:count]] = True
                imputed = dense_imputation(pixels, removed.reshape(11, 11))
                expected = literal_probability(model, (imputed - mean) / std, int(targets[i]))
                assert getattr(curves, name)[i, f].item() == pytest.approx(expected, abs=1e-6)
        assert curves.original[i].item() == pytest.approx(literal_probability(model, inputs[i].numpy(), int(targets[i])), abs=1e-6)
    assert torch.allclose(curves.combined, (curves.lerf.mean(1) - curves.morf.mean(1)) / 2)


def test_road_combined_agrees_with_pytorch_grad_cam_where_the_definitions_agree(monkeypatch):
    """Same imputation, no noise, no ties, fractions that remove the same count as grad-cam's percentiles."""
    from pytorch_grad_cam.metrics import road as theirs
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    class NoiseFree(theirs.NoisyLinearImputer):
        def __init__(self):
            super().__init__(noise=0.0)

    monkeypatch.setattr(theirs, "NoisyLinearImputer", NoiseFree)
    model = tiny_classifier()
    inputs, maps, targets = batch(side=11)
    percentiles = [10, 30, 50, 70, 90]
    # grad-cam removes map ≥ np.percentile(map, p): with 121 distinct values, (100 − p)% · 120 + 1 pixels
    fractions = [((100 - p) / 100 * 120 + 1) / 121 for p in percentiles]
    ours = road(model, inputs, maps, targets, space=PixelSpace(), fractions=fractions, noise=0.0)  # grad-cam imputes model inputs
    cams = maps[:, 0].numpy()
    score = theirs.ROADCombined(percentiles=percentiles)(inputs, cams, [ClassifierOutputSoftmaxTarget(int(t)) for t in targets], model)
    assert np.allclose(ours.combined.numpy(), score, atol=1e-5)


def test_road_is_a_batch_of_its_items_and_seeded():
    model = tiny_classifier()
    inputs, maps, targets = batch()
    whole = road(model, inputs, maps, targets, space=SPACE, fractions=(0.3, 0.6), seed=4)
    again = road(model, inputs, maps, targets, space=SPACE, fractions=(0.3, 0.6), seed=4)
    last = road(model, inputs[2:], maps[2:], targets[2:], space=SPACE, fractions=(0.3, 0.6), seed=4, first_index=2)
    assert torch.equal(whole.morf, again.morf)
    assert torch.allclose(whole.morf[2:], last.morf, atol=1e-12) and torch.allclose(whole.lerf[2:], last.lerf, atol=1e-12)


def test_road_leaves_the_model_as_it_was():
    model = tiny_classifier().train()
    inputs, maps, targets = batch(2)
    road(model, inputs, maps, targets, fractions=(0.5,))
    assert all(m.training for m in model.modules())


# ----------------------------------------------------------------------------- insertion / deletion


def literal_causal(model, image: np.ndarray, saliency: np.ndarray, target: int, mode: str, step: int) -> list[float]:
    """RISE's loop, written out: a copy per iteration, pixels moved one by one from the finish image."""
    from scipy.ndimage import convolve

    blurred = np.stack([convolve(channel, rise_kernel().numpy(), mode="constant", cval=0.0) for channel in image])
    start, finish = (image.copy(), np.zeros_like(image)) if mode == "deletion" else (blurred, image.copy())
    height, width = saliency.shape
    order = np.argsort(-saliency.ravel(), kind="stable")
    iterations = -(-height * width // step)
    scores = []
    for k in range(iterations + 1):
        scores.append(literal_probability(model, start, target))
        for index in order[k * step : (k + 1) * step]:
            y, x = divmod(int(index), width)
            start[:, y, x] = finish[:, y, x]
    return scores


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
@pytest.mark.parametrize("step", [1, 7, 50])
def test_insertion_and_deletion_match_rises_loop(mode, step):
    model = tiny_classifier()
    inputs, maps, targets = batch(2)
    curves = causal_metric(model, inputs, maps, targets, mode=mode, step=step)
    for i in range(2):
        expected = literal_causal(model, inputs[i].double().numpy(), maps[i, 0].numpy(), int(targets[i]), mode, step)
        assert curves.scores[i].numpy() == pytest.approx(expected, abs=1e-6)
        assert curves.auc[i].item() == pytest.approx(np.trapezoid(expected, dx=1 / (len(expected) - 1)), abs=1e-6)


def test_rise_kernel_is_normalised_and_symmetric():
    kernel = rise_kernel().numpy()
    assert kernel.shape == (11, 11) and kernel.sum() == pytest.approx(1.0)
    assert np.allclose(kernel, kernel.T) and np.allclose(kernel, kernel[::-1])
    assert kernel.argmax() == 60


def test_the_road_substrate_imputes_what_is_missing():
    model = tiny_classifier()
    inputs, maps, targets = batch(1)
    deletion = causal_metric(model, inputs, maps, targets, mode="deletion", step=40, substrate="road", space=SPACE, noise=0.0)
    insertion = causal_metric(model, inputs, maps, targets, mode="insertion", step=40, substrate="road", space=SPACE, noise=0.0)
    mean, std = np.array(SPACE.mean)[:, None, None], np.array(SPACE.std)[:, None, None]
    pixels = inputs[0].double().numpy() * std + mean
    order = np.argsort(-maps[0, 0].numpy().ravel(), kind="stable")
    for k, count in enumerate([0, 40, 80, 120, 121]):
        first = np.zeros(121, bool)
        first[order[:count]] = True
        for curves, removed in ((deletion, first), (insertion, ~first)):
            imputed = linear_imputation(pixels, removed.reshape(11, 11))
            expected = literal_probability(model, (imputed - mean) / std, int(targets[0]))
            assert curves.scores[0, k].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, x, s, t: road(m, x, s, t, fractions=(0.0, 0.5)), "strictly between 0 and 1"),
        (lambda m, x, s, t: road(m, x, s[:, :, :5], t), "maps must have shape"),
        (lambda m, x, s, t: road(m, x, s * float("nan"), t), "NaN"),
        (lambda m, x, s, t: road(m, x, s, t.float()), "class indices"),
        (lambda m, x, s, t: causal_metric(m, x, s, t, mode="delete", step=5), "unknown mode"),
        (lambda m, x, s, t: causal_metric(m, x, s, t, mode="deletion", step=0), "step"),
        (lambda m, x, s, t: causal_metric(m, x, s, t, mode="deletion", step=5, substrate="mean"), "unknown substrate"),
    ],
)
def test_bad_input_is_one_clear_error(call, message):
    inputs, maps, targets = batch(2)
    with pytest.raises(NormGradError, match=message):
        call(tiny_classifier(), inputs, maps, targets)


def test_the_training_studys_road_fill_imputes_what_is_not_kept():
    from normgrad.evaluation.training.masking import keep_road

    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 1, 9, 9, generator=generator, dtype=torch.float64)
    mean, std = 0.3, 0.25
    inputs = (pixels - mean) / std
    mask = torch.rand(2, 1, 9, 9, generator=generator) < 0.4
    kept = keep_road(inputs, mask, torch.tensor([std]), [[0, i] for i in range(2)])
    assert torch.equal(kept[mask], inputs[mask])
    for i in range(2):
        imputed = linear_imputation(pixels[i].numpy(), ~mask[i, 0].numpy())  # in pixels, noise-free
        noise = (kept[i] * std + mean).numpy() - imputed
        assert np.allclose(noise[:, mask[i, 0].numpy()], 0)
        assert np.abs(noise).max() < 0.06 and 0.005 < noise[:, ~mask[i, 0].numpy()].std() < 0.015  # σ = 0.01 in pixel units
