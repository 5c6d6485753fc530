"""The evaluation studies on a tiny colour classifier whose right answers are known."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from normgrad.evaluation.common import methods
from normgrad.evaluation.grid import grid_pointing, make_grids
from normgrad.evaluation.report import run_report
from normgrad.evaluation.sanity import blocks_top_down, cascading_randomisation
from normgrad.evaluation.sensitivity import class_sensitivity
from normgrad.evaluation.training_impact import keep_top, training_impact
from normgrad.models import LoadedModel, Preprocess
from test_engine import assert_untouched, snapshot


class ColourNet(nn.Module):
    """Class k = 'how much of colour k': a per-pixel linear colour score, averaged (gradient × input is class-specific)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())  # fmt: skip
        self.colour = nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.colour.weight.copy_(torch.tensor([[4.0, -2, -2], [-2, 4, -2], [-2, -2, 4], [1, 1, 1]]).view(4, 3, 1, 1))
            self.colour.bias.zero_()
        self.mix = nn.Linear(8, 4)

    def forward(self, x):
        colour = self.colour(x).mean((2, 3))
        return 0.5 * colour + 0.01 * self.mix(self.features(x).mean((2, 3)))  # confident, not saturated


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    loaded = LoadedModel(
        "colour", ColourNet().eval(), Preprocess(size=32, mean=(0.5,) * 3, std=(0.5,) * 3), ["red", "green", "blue", "white"]
    )
    rng = np.random.default_rng(0)
    photos = {}
    for name, rgb in {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230), "white": (240, 240, 240)}.items():
        noise = rng.integers(-15, 15, (40, 48, 3))
        photos[name] = Image.fromarray(np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8))
    return loaded, photos


def test_grid_pointing_finds_the_right_cell(setup):
    loaded, photos = setup
    before = snapshot(loaded.model)
    records = grid_pointing(loaded, photos, methods(["input_x_gradient", "center", "normgrad"]), cell=32, threshold=0.2, max_grids=2)
    assert len(records) == 2 * 4 * (1 + 1 + 2)  # grids × cells × (input×grad, centre, NormGrad: 1 stride-4 layer + combined)
    assert all(0 <= r["share"] <= 1 for r in records)
    colour = [r for r in records if r["method"] == "input_x_gradient" and r["photo"] != "white"]
    assert np.mean([r["share"] for r in colour]) > 0.6 and all(r["hit"] for r in colour)
    assert_untouched(loaded.model, before)
    canvas, names, classes = make_grids([(n, p, i) for i, (n, p) in enumerate(photos.items())], 32, 2)[1]
    assert names == ["green", "blue", "white", "red"] and classes == [1, 2, 3, 0] and canvas.size == (64, 64)


def test_sanity_check_starts_at_one_and_leaves_the_model(setup):
    loaded, photos = setup
    before = snapshot(loaded.model)
    assert [name for name, _ in blocks_top_down(loaded.model)] == ["mix", "colour", "features.4", "features.2", "features.0"]
    records = cascading_randomisation(loaded, {"red": photos["red"]}, methods(["normgrad", "gradient"]))
    assert {r["step"] for r in records} == set(range(6))
    first = [r for r in records if r["step"] == 0]
    assert all(r["rho"] == pytest.approx(1.0) and r["ssim"] == pytest.approx(1.0) for r in first)
    assert_untouched(loaded.model, before)


def test_class_sensitivity_records(setup):
    loaded, photos = setup
    records = class_sensitivity(loaded, {"red": photos["red"]}, methods(["normgrad", "input_x_gradient", "random"]))
    assert {r["method"] for r in records} == {"normgrad", "input_x_gradient"}  # model-free baselines have no class
    assert all(-1 <= r["rho"] <= 1 for r in records)


def test_keep_top_and_the_full_image_limit(setup):
    x, baseline = torch.ones(1, 3, 4, 5), torch.zeros(1, 3, 4, 5)
    saliency = torch.arange(20.0).view(4, 5)
    kept = keep_top(x, baseline, saliency, 0.2)
    assert kept[0, 0].sum() == 4 and kept[0, 0, 3, 1:].sum() == 4  # the 4 largest values
    loaded, photos = setup
    records = training_impact(loaded, {"blue": photos["blue"]}, methods(["normgrad", "random"]), fractions=(0.1, 1.0))
    for r in records:
        if r["fraction"] == 1.0:  # every pixel kept: the full image's gradient
            assert r["cosine"] == pytest.approx(1.0, abs=1e-5) and r["kept"] == pytest.approx(1.0, abs=1e-4)
            assert r["kept_first_order"] == pytest.approx(1.0, abs=1e-5)


def test_report_runs_end_to_end(setup, tmp_path):
    loaded, photos = setup
    headline = run_report(tmp_path, loaded, photos, grids=1, sanity_photos=1, impact_photos=1, log=lambda message: None)
    text = (tmp_path / "results.md").read_text()
    for section in ("## Grid pointing game", "## Sanity check", "## Class sensitivity", "## Training impact", "## What the numbers say"):
        assert section in text
    assert (tmp_path / "sanity.png").stat().st_size > 1000 and (tmp_path / "training_impact.png").exists()
    assert (
        len(headline["checks"]) == 6
    )  # grid, sanity, 2 × class sensitivity, 2 × training (ColourNet has nn.ReLU: no guided-backprop note)


def test_report_sections_read_method_names_from_the_records(tmp_path):
    from normgrad.evaluation.report import grid_section, impact_section, sensitivity_section

    grid = [
        {"grid": 0, "cell": k, "photo": "p", "method": m, "layer": "combined", "share": s, "hit": True}
        for m, s in (("gradient", 0.4), ("selective", 0.6))
        for k in range(4)
    ]
    (check,) = grid_section(grid).checks
    assert check == "Grid pointing: the best combined map by share is selective (0.600)."  # no NormGrad or Grad-CAM to quote
    sensitivity = [
        {"photo": "p", "method": m, "layer": "combined", "rho": r}
        for m, r in (("selective", 0.8), ("meta:selective", 0.5), ("gradient", 0.3))
    ]
    assert sensitivity_section(sensitivity).checks == [
        "Class sensitivity: meta-saliency on selective lowers it, as the paper reports (ρ 0.800 → 0.500, combined maps)."
    ]
    impact = [
        {"photo": "p", "method": m, "layer": "combined", "fraction": 0.1, "cosine": c, "kept": 0.5, "kept_first_order": c}
        for m, c in (("gradient", 0.2), ("selective", 0.3))
    ]
    section = impact_section(impact, tmp_path)
    assert section.checks[0].startswith("Training impact at 10 % of the pixels (cosine): best selective (0.300)")
    assert "Meta" not in section.checks[0] and section.headline["training_cosine_at_10pct"] == {"gradient": 0.2, "selective": 0.3}
