"""The training-impact study: IDX reader, masking, the inner step, the statistics, the cache, and a smoke run."""

import copy
import gzip
import json
import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from normgrad.errors import NormGradError
from normgrad.evaluation.training import stats
from normgrad.evaluation.training.cnn import SALIENCY_LAYERS, FashionCNN, TrainConfig, load_or_train
from normgrad.evaluation.training.fashion_mnist import DEBIAN_ROOT, find_root, load_split, read_idx, write_idx
from normgrad.evaluation.training.inner_step import InnerStep, dot
from normgrad.evaluation.training.masking import blurred, keep, overlap, remove, tie_breaker, top_mask
from normgrad.evaluation.training.per_image import Group, Regime, run_per_image
from normgrad.evaluation.training.saliency_maps import method_maps, study_method
from test_engine import assert_untouched, snapshot

# ----------------------------------------------------------------------------- the IDX reader


def idx_bytes(type_code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file written out by hand from the format's definition (not by the code under test)."""
    return bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def test_idx_reader_reads_the_exact_format(tmp_path):
    images = idx_bytes(0x08, (2, 3, 4), bytes(range(24)))
    (tmp_path / "images-idx3-ubyte").write_bytes(images)
    array = read_idx(tmp_path / "images-idx3-ubyte")
    assert array.shape == (2, 3, 4) and array.dtype == np.uint8
    assert array[1, 2, 3] == 23 and array[0, 1, 0] == 4  # row-major

    (tmp_path / "labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(0x08, (3,), bytes([9, 0, 7]))))
    assert read_idx(tmp_path / "labels-idx1-ubyte.gz").tolist() == [9, 0, 7]

    big_endian = idx_bytes(0x0B, (2,), struct.pack(">hh", -2, 300))  # int16, big-endian on disk
    (tmp_path / "shorts").write_bytes(big_endian)
    assert read_idx(tmp_path / "shorts").tolist() == [-2, 300]
    floats = idx_bytes(0x0D, (1, 2), struct.pack(">ff", 1.5, -0.25))
    (tmp_path / "floats").write_bytes(floats)
    assert read_idx(tmp_path / "floats").tolist() == [[1.5, -0.25]]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "not an IDX file"),  # unknown type code
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (idx_bytes(0x08, (2, 2), bytes(3)), "16 bytes in all.*has 15 bytes"),  # one byte short
        (idx_bytes(0x08, (2,), bytes(3)), "10 bytes in all.*has 11 bytes"),  # one byte too many
    ],
)
def test_idx_reader_refuses_inconsistent_files(tmp_path, content, message):
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(NormGradError, match=message):
        read_idx(path)


def test_write_idx_round_trips(tmp_path):
    for dtype in (np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64):
        array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
        write_idx(tmp_path / "a.gz", array)
        back = read_idx(tmp_path / "a.gz")
        assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)
    with pytest.raises(NormGradError, match="cannot store"):
        write_idx(tmp_path / "b", np.zeros(2, np.int64))


def write_fashion_fixture(folder, train: int = 60, test: int = 40, side: int = 28, seed: int = 0, classes: int = 10) -> None:
    """A tiny Fashion-MNIST-shaped data set: class c = a bright bar at row band c (learnable), plus noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % classes
        images = rng.integers(0, 40, (count, side, side)).astype(np.uint8)
        for i, label in enumerate(labels):
            row = 2 + 2 * label
            images[i, row : row + 2, 4 : side - 4] = 220
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels.astype(np.uint8))


def test_fashion_mnist_splits_and_missing_files(tmp_path, monkeypatch):
    write_fashion_fixture(tmp_path)
    train = load_split("train", tmp_path)
    assert train.images.shape == (60, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.labels[:3].tolist() == [0, 1, 2]
    monkeypatch.setenv("NORMGRAD_FASHION_MNIST", str(tmp_path))
    assert find_root() == tmp_path
    with pytest.raises(NormGradError, match="make data.*apt-get install dataset-fashion-mnist"):
        load_split("test", tmp_path / "nowhere")
    with pytest.raises(NormGradError, match="unknown split"):
        load_split("validation", tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(40, 12, np.uint8))
    with pytest.raises(NormGradError, match="labels must lie in 0..9"):
        load_split("test", tmp_path)


@pytest.mark.skipif(not (DEBIAN_ROOT / "t10k-labels-idx1-ubyte.gz").exists(), reason="Fashion-MNIST not installed (make data)")
def test_the_installed_fashion_mnist_has_its_published_shape():
    test = load_split("test", DEBIAN_ROOT)
    assert test.images.shape == (10_000, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10  # 1000 test images per class


# ----------------------------------------------------------------------------- masking


def test_top_mask_keeps_the_highest_pixels():
    maps = torch.arange(32.0).view(2, 1, 4, 4)
    maps[1] = -maps[1]
    mask = top_mask(maps, 0.25, tie_breaker(2, 4, 4, seed=0))
    assert mask.shape == (2, 1, 4, 4) and mask.sum((1, 2, 3)).tolist() == [4, 4]
    assert mask[0].flatten().nonzero().flatten().tolist() == [12, 13, 14, 15]
    assert mask[1].flatten().nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert top_mask(maps, 0.01, tie_breaker(2, 4, 4, 0)).sum().item() == 2  # at least one pixel per image


def test_ties_are_broken_at_random_but_reproducibly():
    flat = torch.zeros(1, 1, 10, 10)
    first = top_mask(flat, 0.1, tie_breaker(1, 10, 10, seed=1))
    assert first.sum() == 10 and torch.equal(first, top_mask(flat, 0.1, tie_breaker(1, 10, 10, seed=1)))
    assert not torch.equal(first, top_mask(flat, 0.1, tie_breaker(1, 10, 10, seed=2)))
    assert first.flatten()[:10].sum() < 10  # not simply the first pixels in memory order
    rings = torch.zeros(1, 1, 10, 10)
    rings[..., 0, :] = 1.0  # 10 tied maxima, 20 % wanted: all of them, then 10 more at random
    mask = top_mask(rings, 0.2, tie_breaker(1, 10, 10, seed=0))
    assert mask[..., 0, :].all() and mask.sum() == 20


def test_keep_and_remove_are_complements():
    x = torch.randn(2, 3, 6, 6)
    mask = top_mask(torch.rand(2, 1, 6, 6), 0.3, tie_breaker(2, 6, 6, 0))
    fill = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    kept, removed = keep(x, mask, fill), remove(x, mask, fill)
    expanded = mask.expand_as(x)
    assert torch.equal(kept[expanded], x[expanded]) and torch.equal(removed[~expanded], x[~expanded])
    assert torch.equal(kept[~expanded], fill.expand_as(x)[~expanded])
    assert torch.equal(removed[expanded], fill.expand_as(x)[expanded])
    big = torch.randn(2, 1, 28, 28)
    first, second = torch.zeros(1, 1, 2, 4, dtype=torch.bool), torch.zeros(1, 1, 2, 4, dtype=torch.bool)
    first[..., 0, :] = True  # pixels 0-3
    second.view(-1)[2:6] = True  # pixels 2-5: two in common
    assert overlap(first, second).tolist() == [0.5] and overlap(mask, mask).tolist() == [1.0, 1.0]
    assert blurred(big).shape == big.shape and blurred(big).std() < 0.5 * big.std()


@pytest.mark.parametrize("fraction", [0.0, 1.5])
def test_top_mask_refuses_bad_input(fraction):
    with pytest.raises(NormGradError, match="fraction"):
        top_mask(torch.rand(1, 1, 4, 4), fraction, tie_breaker(1, 4, 4, 0))
    with pytest.raises(NormGradError, match="NaN"):
        top_mask(torch.full((1, 1, 4, 4), math.nan), 0.5, tie_breaker(1, 4, 4, 0))


# ----------------------------------------------------------------------------- the inner step


def small_model() -> FashionCNN:
    torch.manual_seed(0)
    model = FashionCNN(width=4, side=12)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.double().eval()


def literal_step(model, masked, label, lr, evaluate_on, evaluate_labels):
    """The definition, literally: a deep copy in eval mode, one torch.optim.SGD step on the masked image's CE."""
    twin = copy.deepcopy(model).eval()
    optimiser = torch.optim.SGD(twin.parameters(), lr=lr)
    optimiser.zero_grad()
    F.cross_entropy(twin(masked[None]), label[None]).backward()
    optimiser.step()
    with torch.no_grad():
        return F.cross_entropy(twin(evaluate_on), evaluate_labels).item()


@pytest.mark.parametrize("vectorize", [True, False])
def test_inner_step_matches_a_literal_sgd_step(vectorize):
    model = small_model()
    model.train()  # the step must be taken in eval mode anyway, and the mode restored
    before = snapshot(model)
    x, labels = torch.randn(3, 1, 12, 12, dtype=torch.float64), torch.tensor([1, 4, 7])
    masked = x * (torch.rand(3, 1, 12, 12) > 0.5)
    pool, pool_labels = torch.randn(5, 1, 12, 12, dtype=torch.float64), torch.full((5,), 4)
    step = InnerStep(model, vectorize=vectorize)
    gradients = step.gradients(masked, labels)
    for lr in (1e-2, 0.5):
        after = step.losses_after_steps(gradients, lr, x, labels)
        pool_after = step.pool_losses_after_steps(gradients, lr, pool, pool_labels)
        for i in range(3):
            assert after[i].item() == pytest.approx(
                literal_step(model, masked[i], labels[i], lr, x[i : i + 1], labels[i : i + 1]), rel=1e-10
            )
            assert pool_after[i].item() == pytest.approx(literal_step(model, masked[i], labels[i], lr, pool, pool_labels), rel=1e-10)
    with torch.no_grad():
        model.eval()
        assert torch.allclose(step.losses(x, labels), F.cross_entropy(model(x), labels, reduction="none"))
        model.train()
    assert_untouched(model, before)


def test_first_order_term_is_the_limit_of_the_measured_reduction():
    model = small_model()
    x, labels = torch.randn(2, 1, 12, 12, dtype=torch.float64), torch.tensor([3, 5])
    step = InnerStep(model)
    gradients = step.gradients(x, labels)
    lr = 1e-6
    measured = (step.losses(x, labels) - step.losses_after_steps(gradients, lr, x, labels)) / lr
    assert torch.allclose(measured, dot(gradients, gradients), rtol=1e-4)
    pool_gradient = step.pool_gradient(x[:1], labels[:1])
    assert dot(gradients, pool_gradient).shape == (2,)


def test_per_image_study_records_the_literal_step():
    """One image through the whole pipeline (map → mask → step → loss) against the literal definition."""
    model = small_model()
    x, labels = torch.randn(2, 1, 12, 12, dtype=torch.float64), torch.tensor([2, 2])
    pool, pool_labels = torch.randn(3, 1, 12, 12, dtype=torch.float64), torch.full((3,), 2)
    regime = Regime("tiny", "", model, [Group(x, labels, [0, 1], list(SALIENCY_LAYERS), pool, pool_labels)], torch.zeros(1))
    lrs, fractions = (1e-3, 0.1), (0.25,)
    result = run_per_image(regime, ["normgrad", "meta"], fractions=fractions, lrs=lrs, fills=("mean",), class_lrs=(0.1,))
    ties = tie_breaker(2, 12, 12, seed=0)
    for mi, name in enumerate(["normgrad", "meta"]):
        for li, lr in enumerate(lrs):
            maps = method_maps(study_method(name, lr), model, x, labels, SALIENCY_LAYERS, seed=0)
            masked = keep(x, top_mask(maps, 0.25, ties), torch.zeros(1, 1, 1))
            for i in range(2):
                before = F.cross_entropy(model(x[i : i + 1]), labels[i : i + 1]).item()
                expected = before - literal_step(model, masked[i], labels[i], lr, x[i : i + 1], labels[i : i + 1])
                assert result.masked_self[li, mi, 0, 0, i] == pytest.approx(expected, rel=1e-7, abs=1e-14)
                if lr == 0.1:
                    pool_before = F.cross_entropy(model(pool), pool_labels).item()
                    expected_class = pool_before - literal_step(model, masked[i], labels[i], lr, pool, pool_labels)
                    assert result.masked_class[li, mi, 0, 0, i] == pytest.approx(expected_class, rel=1e-7, abs=1e-14)
                else:
                    assert math.isnan(result.masked_class[li, mi, 0, 0, i])  # the class loss is measured at class_lrs only
    assert (result.full_self > 0).all()  # a small step on the full image lowers its own loss


# ----------------------------------------------------------------------------- statistics


def test_bootstrap_interval_of_a_known_distribution_has_its_coverage():
    rng = np.random.default_rng(0)
    n, sigma, covered, widths = 200, 2.0, 0, []
    for replicate in range(60):
        sample = rng.normal(1.0, sigma, n)
        interval = stats.mean_interval(sample, resamples=1000, seed=replicate)
        covered += interval.low < 1.0 < interval.high
        widths.append(interval.high - interval.low)
    assert covered >= 52  # 95 % nominal: 57 expected of 60; ≥ 52 holds with probability > 0.99
    assert np.mean(widths) == pytest.approx(2 * 1.96 * sigma / math.sqrt(n), rel=0.1)


def test_share_and_paired_comparison():
    rng = np.random.default_rng(1)
    full = rng.uniform(1, 2, 300)
    exact = stats.share(0.5 * full, full, resamples=500)
    assert exact.value == pytest.approx(0.5) and exact.low == pytest.approx(0.5) and exact.high == pytest.approx(0.5)
    b = rng.uniform(0, 1, 300) * full
    a = b + 0.1 * full + rng.normal(0, 0.01, 300)
    comparison = stats.paired(a, b, full, resamples=1000)
    assert comparison.difference.low < 0.1 < comparison.difference.high
    assert comparison.wilcoxon_p < 1e-10 and comparison.cohen_dz > 3 and comparison.rank_biserial == pytest.approx(1.0)
    assert stats.verdict(comparison.difference, 1, 0.02) == "supported"
    assert stats.verdict(comparison.difference, -1, 0.02) == "not supported"
    same = stats.paired(b, b, full, resamples=200)
    assert same.wilcoxon_p == 1.0 and same.difference.value == 0.0
    noise = stats.paired(b + rng.normal(0, 0.5, 300), b, full, resamples=500)
    assert stats.verdict(noise.difference, 1, 0.02) == "inconclusive"


def test_seed_interval_and_verdicts():
    interval = stats.seed_interval(np.array([1.0, 2.0, 3.0]))
    assert interval.value == 2.0 and interval.high - 2.0 == pytest.approx(4.302653 * math.sqrt(1 / 3), rel=1e-6)
    widened = stats.seed_interval(np.array([1.0, 2.0, 3.0]), test_variance=1.0)
    assert widened.high - 2.0 == pytest.approx(4.302653 * math.sqrt(1 / 3 + 1), rel=1e-6)
    single = stats.seed_interval(np.array([0.8]), test_variance=0.0001)
    assert single.high - 0.8 == pytest.approx(1.959964 * 0.01, rel=1e-5)
    assert stats.verdict(stats.Interval(0.0, -0.01, 0.015), 1, 0.02) == "not supported"  # practically equal
    assert stats.verdict(stats.Interval(0.0, -0.01, 0.05), 1, 0.02) == "inconclusive"
    assert stats.verdict(stats.Interval(-0.1, -0.2, -0.05), -1, 0.02) == "supported"
    with pytest.raises(NormGradError):
        stats.verdict(interval, 0, 0.1)


# ----------------------------------------------------------------------------- model cache and the whole study


def test_model_is_cached_and_read_back_with_weights_only(tmp_path):
    write_fashion_fixture(tmp_path / "data")
    train, test = load_split("train", tmp_path / "data"), load_split("test", tmp_path / "data")
    config = TrainConfig(epochs=1, width=4, batch_size=16)
    first = load_or_train(train, test, config, seed=3, cache=tmp_path / "cache")
    second = load_or_train(train, test, config, seed=3, cache=tmp_path / "cache")
    assert first.cached_at == second.cached_at and first.cached_at.parent == tmp_path / "cache"
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert second.test_accuracy == first.test_accuracy and not second.model.training
    retrained = load_or_train(train, test, config, seed=3, cache=tmp_path / "cache", retrain=True)
    for a, b in zip(first.model.state_dict().values(), retrained.model.state_dict().values()):
        assert torch.equal(a, b)  # seeded: the same model again
    first.cached_at.write_bytes(b"not a checkpoint")
    with pytest.raises(NormGradError, match="delete it or pass --retrain"):
        load_or_train(train, test, config, seed=3, cache=tmp_path / "cache")


@pytest.fixture
def one_thread():
    """One torch thread: small models run many times faster than with threads fighting over shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_study_runs_end_to_end_on_tiny_data(tmp_path, capsys, one_thread):
    from normgrad.cli import main
    from normgrad.evaluation.training.study import QUICK, run_study

    write_fashion_fixture(tmp_path / "data", train=80, test=60, classes=3)  # 3 classes: 3 groups of images
    config = QUICK.__class__(
        **{
            **QUICK.__dict__,
            "images": 15,
            "pool": 2,
            "fractions": (0.1, 0.5),
            "lrs": (1e-4, 2.5e-3),
            "model": TrainConfig(epochs=2, width=4, batch_size=16),
            "imagenet": False,
            "roar_methods": ("normgrad", "meta", "random"),
            "roar_fractions": (0.5,),
            "roar_seeds": (0, 1),
            "roar_train_images": 40,
            "roar_test_images": 30,
            "roar_model": TrainConfig(epochs=1, width=4, batch_size=16),
            "resamples": 100,
            "jobs": 0,  # the worker-process path has its own test
        }
    )
    document = run_study(config, tmp_path / "out", data=tmp_path / "data", cache=tmp_path / "cache", log=lambda _: None)
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert "training_impact.png" not in written  # that name belongs to `normgrad eval report`
    figures = {"training_per_image.png", "training_lr.png", "training_roar.png", "training_masks.png"}
    assert {"training.md", "training.json", *figures} <= written
    saved = json.loads((tmp_path / "out" / "training.json").read_text())
    assert saved["per_image"]["fashion-mnist"]["n"] == 15
    claims = {c["claim"]: c["verdict"] for c in document["claims"]}
    assert len(claims) >= 8 and set(claims.values()) <= {"supported", "not supported", "inconclusive"}
    assert any(c["regime"] == "fashion-mnist retrained" for c in document["claims"])
    text = (tmp_path / "out" / "training.md").read_text()
    assert "## What holds (computed)" in text and "QUICK MODE" in text and "ROAR" in text
    records = np.load(tmp_path / "out" / "training-records.npz")
    assert records["fashion-mnist.masked_self"].shape == (2, 10, 3, 2, 15)  # lrs, methods, fills (mean, blur, road), k, images
    assert not np.isnan(records["fashion-mnist.masked_self"]).any()
    assert records["roar.correct"].shape == (3, 2, 1, 2, 30) and records["roar.reference"].shape == (2, 30)
    overlaps = saved["per_image"]["fashion-mnist"]["overlap"]
    assert len(overlaps) == 2 * 4 and all(0 <= r["value"] <= 1 for r in overlaps)

    # the CLI reaches the same code, and reports a missing data folder in one line
    assert main(["eval", "training", "--out", str(tmp_path / "cli"), "--quick", "--data", str(tmp_path / "missing")]) == 2
    assert "make data" in capsys.readouterr().err


def test_few_samples_get_a_jackknife_t_interval():
    values = np.array([1.0, 2.0, 4.0, 7.0])
    interval = stats.mean_interval(values)
    standard_error = values.std(ddof=1) / 2  # the jackknife SE of a mean is the usual standard error
    assert interval.value == 3.5 and interval.high - 3.5 == pytest.approx(3.182446 * standard_error, rel=1e-6)
    assert math.isnan(stats.mean_interval(np.array([1.0, 2.0])).low)


@pytest.mark.slow
def test_roar_retrains_in_worker_processes_as_in_this_process(tmp_path, one_thread):
    from normgrad.evaluation.training.roar import RoarRun

    write_fashion_fixture(tmp_path, train=60, test=30)
    train, test = load_split("train", tmp_path), load_split("test", tmp_path)
    trained = load_or_train(train, test, TrainConfig(epochs=1, width=4, batch_size=16), 0, cache=tmp_path)
    x, xt = trained.normalise(train.images), trained.normalise(test.images)
    options = dict(fractions=(0.2,), seeds=(0,), config=TrainConfig(epochs=1, width=4, batch_size=16), layers=SALIENCY_LAYERS)
    here = RoarRun(trained, x, train.labels, xt, test.labels, ["normgrad", "random"], jobs=0, **options).collect()
    workers = RoarRun(trained, x, train.labels, xt, test.labels, ["normgrad", "random"], jobs=2, **options).collect()
    assert here.correct.shape == (2, 2, 1, 1, 30)
    assert np.array_equal(here.correct, workers.correct) and np.array_equal(here.reference, workers.reference)


def test_the_quick_study_runs_on_one_thread_and_one_photo(monkeypatch, tmp_path):
    """--quick fits its stated minutes on a shared 2-core machine: one torch thread (no oversubscription beside the ROAR
    worker), one photo for the EfficientNet-Lite0 phase (its largest)."""
    import torch

    from normgrad.cli import main
    from normgrad.evaluation.training import study

    seen = {}

    def fake_run_study(config, out, **kwargs):
        seen.update(threads=torch.get_num_threads(), photos=config.photos, quick=config.quick)
        return {"claims": []}

    threads = torch.get_num_threads()
    monkeypatch.setattr(study, "run_study", fake_run_study)
    try:
        assert main(["eval", "training", "--out", str(tmp_path), "--quick"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert seen == {"threads": 1, "photos": ("chelsea",), "quick": True}
