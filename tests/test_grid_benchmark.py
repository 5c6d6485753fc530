"""The grid benchmark: grid construction, hit and mass, the photo bootstrap, candidates through the CLI's steps."""

import numpy as np
import pytest
import torch
from PIL import Image

import normgrad as ng
from normgrad.errors import NormGradError
from normgrad.evaluation.benchmark_photos import PhotoFile, split
from normgrad.evaluation.grid import benchmark_grids, bootstrap_mean, cell_scores, make_grid
from normgrad.evaluation.grid_benchmark import Candidate, _FullSize, final_map, paired_difference, summarise


def _solid(rgb, size=(50, 30)):
    return Image.new("RGB", size, rgb)


def test_make_grid_lays_cells_row_by_row_with_mixed_sizes():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    grid = make_grid([_solid(c) for c in colours], widths=[10, 20, 30], heights=[7, 13], names="abcdef", classes=range(6))
    assert grid.image.size == (60, 20)
    assert grid.boxes == ((0, 0, 7, 10), (0, 10, 7, 30), (0, 30, 7, 60), (7, 0, 20, 10), (7, 10, 20, 30), (7, 30, 20, 60))
    pixels = np.asarray(grid.image)
    for (top, left, bottom, right), colour in zip(grid.boxes, colours):
        assert (pixels[top:bottom, left:right] == colour).all()
    with pytest.raises(NormGradError, match="needs 6 photos"):
        make_grid([_solid(colours[0])], [10, 20, 30], [7, 13])


def test_make_grid_centre_crops_to_the_cell_shape():
    photo = np.zeros((40, 100, 3), np.uint8)
    photo[:, 20:80] = 255  # a white centre band wider than the centre 40×40 crop
    grid = make_grid([Image.fromarray(photo)], widths=[20], heights=[20])
    assert (np.asarray(grid.image) == 255).all()


def test_cell_scores_against_hand_computed_values():
    saliency = torch.zeros(4, 6)
    saliency[0, 0], saliency[0, 5], saliency[3, 5] = 1.0, 2.0, 1.0  # argmax at (0, 5)
    saliency[2, 1] = -5.0  # negative values carry no mass
    right_column, left_column = (0, 3, 4, 6), (0, 0, 4, 3)
    assert cell_scores(saliency, right_column) == (True, pytest.approx(3 / 4))
    assert cell_scores(saliency, left_column) == (False, pytest.approx(1 / 4))
    assert cell_scores(saliency, (0, 5, 1, 6))[0]  # the argmax pixel itself
    assert cell_scores(-torch.ones(4, 6), (0, 0, 2, 3)) == (True, pytest.approx(0.25))  # no positive mass: the area share
    tie = torch.ones(4, 6)
    assert cell_scores(tie, (0, 0, 1, 1))[0] and not cell_scores(tie, (1, 1, 4, 6))[0]  # the first argmax, as torch gives it
    with pytest.raises(NormGradError, match="one \\(H, W\\) map"):
        cell_scores(torch.zeros(1, 4, 6), right_column)


def test_bootstrap_resamples_photos_not_cells():
    # photo a: 10 cells all hit, photo b: 1 cell missed — the mean is over cells, the spread over photos
    values = [1.0] * 10 + [0.0]
    clusters = ["a"] * 10 + ["b"]
    mean, low, high = bootstrap_mean(values, clusters, resamples=4000)
    assert mean == pytest.approx(10 / 11)
    # resamples are {a,a}: 1, {b,b}: 0, {a,b}: 10/11 with probabilities 1/4, 1/4, 1/2
    assert low == pytest.approx(0.0) and high == pytest.approx(1.0)
    assert bootstrap_mean([0.5] * 6, list("aabbcc")) == (0.5, 0.5, 0.5)
    many = np.random.default_rng(0).random(400)
    m, lo, hi = bootstrap_mean(many, [i // 4 for i in range(400)], resamples=2000)
    assert lo < m < hi and hi - lo == pytest.approx(2 * 1.96 * np.std(many.reshape(100, 4).mean(1)) / 10, rel=0.25)
    with pytest.raises(NormGradError, match="one cluster per value"):
        bootstrap_mean([1.0, 2.0], ["a"])


def test_benchmark_grids_use_distinct_classes_and_every_photo():
    photos = [{"name": f"p{i}", "kind": "scene" if i < 6 else "cutout", "class": i % 9} for i in range(12)]
    specs = benchmark_grids(photos, {"2x2": 6, "2x2 scenes": 2, "3x3 mixed": 2}, seed=1)
    assert [s["layout"] for s in specs] == ["2x2"] * 6 + ["2x2 scenes"] * 2 + ["3x3 mixed"] * 2
    for spec in specs:
        assert len(set(spec["classes"])) == len(spec["classes"]) == len(spec["widths"]) * len(spec["heights"])
    assert {n for s in specs[:6] for n in s["names"]} == {p["name"] for p in photos}  # least-used first: all 12 appear
    assert all(int(n[1:]) < 6 for s in specs[6:8] for n in s["names"])  # scenes only
    assert {w for s in specs[8:] for w in s["widths"] + s["heights"]} <= {128, 192, 256}
    assert specs == benchmark_grids(photos, {"2x2": 6, "2x2 scenes": 2, "3x3 mixed": 2}, seed=1)  # reproducible
    with pytest.raises(NormGradError, match="needs 9 photos"):
        benchmark_grids(photos[:5], {"3x3": 1})


def test_split_is_by_photo_name_and_stable():
    records = [{"name": f"source:photo{i}"} for i in range(200)]
    development, heldout = split(records)
    assert len(development) + len(heldout) == 200 and 50 < len(heldout) < 90
    assert split(records[:100])[1] == [r for r in heldout if int(r["name"][12:]) < 100]
    assert PhotoFile("tuxpaint-stamps-default", __import__("pathlib").Path("/s/animals/birds/owl.png"), "cutout").name == (
        "tuxpaint-stamps-default:birds/owl"
    )


def test_candidates_score_the_map_the_cli_writes():
    """The benchmark's shared upsampling gives exactly ng.combine's map (the CLI's `_one_map`)."""
    maps = {"a": torch.rand(3, 1, 5, 7), "b": torch.rand(3, 1, 10, 14)}
    full = _FullSize({("224", "m"): maps}, 40, 56)
    for candidate in [
        Candidate("m", ("a", "b")),
        Candidate("m", ("a", "b"), "geometric", (1, 3)),
        Candidate("m", ("a", "b"), "sum", (2, 1)),
        Candidate("m", ("b",)),
        Candidate("m", ("a",), "none"),
    ]:
        expected = final_map(maps, candidate, 40, 56)
        if candidate.combine != "none":
            reference = ng.combine({k: maps[k] for k in candidate.layers}, size=(40, 56), mode=candidate.combine, weights=candidate.weights)
            assert torch.equal(expected, reference)
        assert torch.allclose(full(candidate), expected, atol=1e-6)
    assert Candidate("m", ("a", "b"), "geometric", (1, 3), "keep<=448").label == "m [a, b] geometric w=1,3 @keep<=448"


def test_summaries_and_paired_differences():
    records = []
    for grid in range(6):
        for cell in range(4):
            photo = f"p{(grid + cell) % 5}"
            records.append({"grid": grid, "cell": cell, "photo": photo, "candidate": "good", "hit": True, "mass": 0.8})
            records.append({"grid": grid, "cell": cell, "photo": photo, "candidate": "bad", "hit": cell == 0, "mass": 0.3})
    table = summarise(records, resamples=500)
    assert table["good"]["hit"] == (1.0, 1.0, 1.0) and table["good"]["targets"] == 24 and table["good"]["photos"] == 5
    assert table["bad"]["hit"][0] == pytest.approx(0.25)
    difference, low, high = paired_difference(records, "good", "bad", "mass", resamples=500)
    assert difference == pytest.approx(0.5) and low == pytest.approx(0.5) and high == pytest.approx(0.5)
    with pytest.raises(NormGradError, match="no common targets"):
        paired_difference(records, "good", "other", "hit")


def test_cell_records_score_each_cell_with_its_own_map():
    from types import SimpleNamespace

    from normgrad.evaluation.grid import cell_records

    grid = SimpleNamespace(image=Image.new("RGB", (4, 2)), boxes=[(0, 0, 2, 2), (0, 2, 2, 4)])
    full = torch.zeros(2, 1, 2, 4)
    full[0, 0, 0, 0] = 1.0  # cell 0's map: all its mass in cell 0
    full[1, 0, 1, 0], full[1, 0, 0, 3] = 3.0, 1.0  # cell 1's map: argmax in cell 0, a quarter of its mass in cell 1
    spec = {"id": "g", "layout": "1x2", "names": ["a", "b"]}
    records = cell_records(spec, grid, full, "m", chance=True, seconds_per_map=0.5)
    scored = [(r["cell"], r["photo"], r["hit"], r["mass"], r["chance"]) for r in records]
    assert scored == [(0, "a", True, 1.0, 0.5), (1, "b", False, 0.25, 0.5)]
    assert all(r["grid"] == "g" and r["layout"] == "1x2" and r["candidate"] == "m" and r["seconds_per_map"] == 0.5 for r in records)
    assert "chance" not in cell_records(spec, grid, full, "m")[0]
