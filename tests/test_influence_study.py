"""The influence study's pieces: the patch-pixel AUROC against its pairwise definition, the planted ground truth, the report."""

from __future__ import annotations

import numpy as np
import torch

from normgrad.evaluation.influence.markdown import claims, render
from normgrad.evaluation.influence.proponents import auroc
from normgrad.evaluation.influence.setup import SetupConfig, build
from normgrad.evaluation.training.fashion_mnist import Split


def test_auroc_is_the_share_of_positive_negative_pairs_in_order():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # ties on purpose
    positive = rng.random(60) < 0.3
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[positive] for n in scores[~positive]]
    assert auroc(scores, positive) == np.mean(pairs)


def test_a_uniform_map_has_auroc_one_half():
    mask = np.zeros((28, 28), dtype=bool)
    mask[1:5, 1:5] = True
    assert auroc(np.zeros((28, 28)), mask) == 0.5


def fake_split(count: int) -> Split:
    generator = torch.Generator().manual_seed(0)
    return Split(torch.randint(0, 120, (count, 28, 28), dtype=torch.uint8, generator=generator), torch.arange(count) % 10)


def test_ground_truth_mislabels_only_unpatched_images_and_keeps_one_checkpoint_per_epoch():
    config = SetupConfig(train_images=200, test_images=5, patch_share=0.3, mislabel_share=0.1, epochs=2, lrs=(0.05, 0.01), width=4)
    setup = build(fake_split(200), fake_split(5), config)
    assert int(setup.patched.sum()) == 60 and int(setup.mislabelled.sum()) == 20
    assert not (setup.patched & setup.mislabelled).any()
    assert (setup.train_y != setup.true_y).equal(setup.mislabelled)
    assert len(setup.checkpoints) == 2 and setup.lrs == [0.05, 0.01]
    assert setup.test_mask.sum() == 5 * 16


def interval(value: float, low: float, high: float) -> dict[str, float]:
    return {"value": value, "low": low, "high": high}


def document(captum_difference: float = 1e-7) -> dict:
    recall = {
        "recall_top_0.01": interval(0.2, 0.1, 0.3),
        "recall_top_0.05": interval(0.6, 0.5, 0.7),
        "recall_top_0.1": interval(0.8, 0.7, 0.9),
    }
    random = {key: interval(0.05, 0.02, 0.08) for key in recall}
    return {
        "command": "normgrad eval influence --quick",
        "layers": ["conv1"],
        "setup": {
            "train_images": 100,
            "patch_share": 0.2,
            "mislabel_share": 0.01,
            "epochs": 2,
            "lrs": [0.1, 0.01],
            "accuracy_patched": 0.9,
            "accuracy_plain": 0.8,
        },  # fmt: skip
        "shortcut": {
            "test_images": 10,
            "top_k": 5,
            "training_share_patched": 0.2,
            "same_class_proponents": 0.9,
            "proponents_patched": interval(0.9, 0.8, 1.0),
            "proponents_patched_without_test_patch": interval(0.3, 0.2, 0.4),
            "opponents_patched": interval(0.1, 0.0, 0.2),
            "auroc_pairs": 40,
            "auroc_images": 10,
            "auroc": {"normgrad TracIn map": interval(0.9, 0.85, 0.95), "random": interval(0.5, 0.45, 0.55)},
            "auroc_difference": {"random": interval(0.4, 0.3, 0.5)},
        },  # fmt: skip
        "mislabels": {
            "training_images": 100,
            "mislabelled": 1,
            "captum_images": 50,
            "captum_max_relative_difference": captum_difference,
            "captum_rank_agreement": 1.0,
            "detection": {
                "self-influence (normgrad)": {"auroc": 0.9, **recall},
                "loss (final model)": {"auroc": 0.8, **recall},
                "random": {"auroc": 0.5, **random},
            },
        },  # fmt: skip
    }


def test_what_holds_is_decided_from_the_intervals():
    verdicts = {claim: verdict for claim, verdict, _ in claims(document(), None)}
    assert verdicts["The test image's patch brings patched training images among its top proponents"] == "holds"
    assert verdicts["normgrad's maps locate the patch better than random"] == "holds"
    assert set(verdicts.values()) == {"holds"}


def test_a_difference_from_captum_beyond_rounding_does_not_hold():
    verdicts = {claim: verdict for claim, verdict, _ in claims(document(captum_difference=0.01), None)}
    assert verdicts["normgrad's self-influence equals Captum's TracInCP on the same checkpoints and layers"] == "does not hold"


def test_the_report_names_its_command_and_asks_for_the_cost_benchmark_until_it_has_run():
    text = render(document())
    assert "normgrad eval influence --quick" in text and "bench_influence.py" in text


def test_the_study_runs_end_to_end_on_a_tiny_dataset_and_writes_its_report(tmp_path):
    from normgrad.evaluation.influence.study import StudyConfig, run_study
    from normgrad.evaluation.training.fashion_mnist import write_idx

    data = tmp_path / "data"
    data.mkdir()
    for split, count in (("train", 300), ("t10k", 12)):
        fake = fake_split(count)
        write_idx(data / f"{split}-images-idx3-ubyte", fake.images.numpy())
        write_idx(data / f"{split}-labels-idx1-ubyte", fake.labels.numpy().astype(np.uint8))
    config = StudyConfig(setup=SetupConfig(train_images=300, test_images=6, epochs=1, lrs=(0.05,), width=4, mislabel_share=0.05),
                         top_k=3, batch_size=100, captum_images=40, resamples=100)  # fmt: skip
    document = run_study(config, tmp_path / "out", data=data, log=lambda message: None)
    assert document["mislabels"]["captum_max_relative_difference"] < 1e-4
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "influence.json", "influence.md", "influence-proponents.png", "influence-flagged.png"
    }  # fmt: skip
