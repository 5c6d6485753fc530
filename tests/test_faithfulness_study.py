"""The faithfulness study: patch scores against literal definitions, verdict signs, and a small end-to-end run with --merge."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from normgrad.cli import main
from normgrad.evaluation.faithfulness.maps import Subject
from normgrad.evaluation.faithfulness.shortcut_study import ShortcutConfig, patch_scores
from normgrad.evaluation.faithfulness.study import FaithfulnessConfig, read_records, run_faithfulness, write_report
from normgrad.evaluation.faithfulness.summary import summarise
from normgrad.evaluation.training.cnn import TrainConfig
from test_training_study import write_fashion_fixture

VERDICTS = {"supported", "not supported", "inconclusive"}


def test_patch_scores_match_their_definitions():
    from sklearn.metrics import roc_auc_score

    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(5, 1, 10, 12, generator=generator)
    maps[0] = maps[0].round()  # ties, averaged in the AUROC
    patch = torch.zeros(5, 1, 10, 12, dtype=torch.bool)
    patch[:, :, 2:5, 3:7] = True
    scores = patch_scores(maps, patch)
    for i in range(5):
        values, inside = maps[i, 0].numpy().ravel(), patch[i, 0].numpy().ravel()
        assert scores["auroc"][i] == pytest.approx(roc_auc_score(inside, values))
        positive = np.clip(values, 0, None)
        assert scores["mass"][i] == pytest.approx(positive[inside].sum() / positive.sum())
    distinct = 1
    top = np.argsort(-maps[distinct, 0].numpy().ravel())[:12]
    assert scores["top"][distinct] == pytest.approx(patch[distinct, 0].numpy().ravel()[top].mean())


def test_a_lower_deletion_supports_a_more_faithful_claim():
    rng = np.random.default_rng(0)
    base = rng.random(60)
    values = {
        Subject("default"): {"road_combined": base + 0.2, "deletion": base - 0.3},
        Subject("random"): {"road_combined": base, "deletion": base},
    }
    document = summarise({"toy": {"values": values, "seconds_per_image": {}, "images": 60}}, {"toy": {}}, resamples=200)
    claim = next(c for c in document["claims"] if c["id"] == "default-random")
    assert claim["verdict"] == "supported"
    assert claim["metrics"]["deletion"]["verdict"] == "supported"  # lower deletion AUC is better
    assert claim["metrics"]["deletion"]["difference"]["value"] == pytest.approx(-0.3)


def small_config() -> FaithfulnessConfig:
    return FaithfulnessConfig(
        fashion_images=6,
        methods=("default", "normgrad", "random", "GradCAM"),
        fractions=(0.3, 0.7),
        fashion_iterations=4,
        fashion_road_iterations=2,
        resamples=100,
        model=TrainConfig(epochs=1, width=4),
        regimes=("fashion-mnist", "shortcut"),
        shortcut=ShortcutConfig(
            train_images=200,
            epochs=1,
            eval_images=12,
            methods=("normgrad", "meta", "random"),
            control_train=120,
            control_test=60,
            control_epochs=1,
            resamples=100,
        ),  # fmt: skip
    )


def test_a_small_run_writes_verdicts_and_merges_to_the_same_report(tmp_path):
    data = tmp_path / "data"
    write_fashion_fixture(data, train=400, test=60)
    config = small_config()
    document = run_faithfulness(config, tmp_path / "out", data=data, cache=tmp_path / "cache", log=lambda message: None)
    assert {c["verdict"] for c in document["claims"]} <= VERDICTS and document["claims"]
    assert {c["verdict"] for c in document["shortcut"]["claims"]} <= VERDICTS
    rows = document["tables"]["fashion-mnist"]["subjects"]
    assert {"default", "normgrad", "random", "GradCAM", "default @ relu2", "normgrad @ relu3"} <= set(rows)
    assert set(rows["normgrad"]) >= {"road_combined", "deletion", "insertion", "deletion_road", "insertion_road"}
    text = (tmp_path / "out" / "faithfulness.md").read_text()
    assert "## What holds (computed)" in text and "## Ground truth: a planted shortcut" in text

    merged = write_report(config, tmp_path / "merged", [read_records(tmp_path / "out" / "faithfulness-records.json")])
    assert merged["claims"] == document["claims"] and merged["tables"] == document["tables"]


def test_the_fashion_regime_is_a_batch_of_its_items(tmp_path):
    """Every image draws its own noise and tie-breaks: two batch sizes give the same numbers."""
    data = tmp_path / "data"
    write_fashion_fixture(data, train=100, test=30)
    config = replace(small_config(), regimes=("fashion-mnist",), methods=("normgrad", "random"), per_layer=())
    one = run_faithfulness(replace(config, batch_size=6), tmp_path / "a", data=data, cache=tmp_path / "cache", log=lambda m: None)
    two = run_faithfulness(replace(config, batch_size=4), tmp_path / "b", data=data, cache=tmp_path / "cache", log=lambda m: None)
    assert one["tables"]["fashion-mnist"]["subjects"] == two["tables"]["fashion-mnist"]["subjects"]


def test_merge_refuses_a_file_that_is_not_a_record(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    assert main(["eval", "faithfulness", "--out", str(tmp_path), "--merge", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a faithfulness-records.json" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
