"""Videos and volumes end to end: layouts on a t×h×w grid, baselines and targets on clips, readers, writers and the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import normgrad as ng
from normgrad import baselines, video
from normgrad.cli import main
from normgrad.engine.layouts import Evidence, LayoutError, decide_layout, volume_token_grid
from normgrad.evaluation import video_task
from normgrad.models import Preprocess
from test_engine import assert_untouched, snapshot


def tiny_3d_cnn(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(6, 8, 3, stride=(1, 2, 2), padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    ).eval()


def volume_evidence(frames: int = 4, height: int = 32, width: int = 48, prefix: int = 0) -> Evidence:
    return Evidence((height, width), 2, prefix, "first", True, frames)


def test_five_d_maps_channels_last_and_tokens_on_the_clip_grid():
    evidence = volume_evidence()
    assert decide_layout((2, 8, 2, 16, 24), nn.Conv3d(3, 8, 3), evidence, "x").grid == (2, 16, 24)
    channels_last = decide_layout((2, 4, 8, 12, 5), nn.Linear(3, 5), evidence, "x")
    assert (channels_last.kind, channels_last.grid) == ("nhwc", (4, 8, 12))
    tokens = decide_layout((2, 1 + 2 * 3 * 5, 16), nn.Linear(3, 16), volume_evidence(4, 12, 20, prefix=1), "x")
    assert (tokens.kind, tokens.grid, tokens.prefix) == ("tokens", (2, 3, 5), 1)
    assert decide_layout((2, 7), nn.Linear(3, 7), evidence, "x").to_nchw(torch.zeros(2, 7)).shape == (2, 7, 1, 1, 1)


def test_a_4d_activation_of_a_video_model_has_no_map():
    with pytest.raises(LayoutError, match="4-D activation has no time axis"):
        decide_layout((2, 8, 16, 24), nn.Conv2d(3, 8, 3), volume_evidence(), "layer 'x'")


def test_token_counts_two_grids_explain_are_settled_by_the_sizes_the_module_returns():
    assert volume_token_grid(64, 4, 32, 32) is None  # 1×8×8 and 4×4×4 both fit a 4×32×32 clip
    with pytest.raises(LayoutError, match="two t×h×w grids"):
        decide_layout((2, 64, 16), nn.Linear(3, 16), volume_evidence(4, 32, 32), "layer 'x'")
    layout = decide_layout((2, 64, 16), nn.Linear(3, 16), volume_evidence(4, 32, 32), "x", sizes=(4, 4, 4))
    assert layout.grid == (4, 4, 4)


def test_a_clip_without_a_batch_dimension_is_one_clear_error():
    with pytest.raises(ng.NormGradError, match=r"one clip \(C, T, H, W\) needs a batch dimension"):
        ng.normgrad(tiny_3d_cnn(), torch.randn(3, 4, 16, 16), layers=["1"])


def test_unit_target_at_a_frame_row_and_column():
    model = tiny_3d_cnn()
    x = torch.randn(2, 3, 4, 16, 16)
    maps = ng.normgrad(model, x, ng.Unit("3", 2, (1, 3, 4)), layers=["1"])
    assert maps["1"].shape == (2, 1, 4, 16, 16)
    assert maps["1"][:, :, 3:].abs().sum() == 0  # 3×3×3 kernels: frame 1's unit sees frames 0..2 of layer 1 only
    with pytest.raises(ng.NormGradError, match=r"must be \(frame, row, col\)"):
        ng.normgrad(model, x, ng.Unit("3", 2, (3, 4)), layers=["1"])


def test_gradcam_on_clips_equals_the_definition():
    """Captum's LayerGradCam on (N, C, t, h, w): ReLU(Σ_c mean_{t,h,w}(∂J/∂a_c) · a_c), from plain autograd."""
    model = tiny_3d_cnn()
    x = torch.randn(2, 3, 4, 16, 16)
    maps = baselines.gradcam(model, x, [1, 2], layers=["3"])["3"]
    kept = {}
    handle = model[3].register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    output = model(x)
    handle.remove()
    (grad,) = torch.autograd.grad(output.gather(1, torch.tensor([[1], [2]])).sum(), [kept["a"]])
    expected = (grad.mean((2, 3, 4), keepdim=True) * kept["a"]).sum(1, keepdim=True).relu()
    torch.testing.assert_close(maps, expected.detach(), rtol=1e-5, atol=1e-6)


def test_input_methods_and_baselines_give_clip_maps():
    model = tiny_3d_cnn()
    x = torch.randn(2, 3, 4, 16, 16)
    for method in (baselines.gradient, baselines.input_x_gradient, baselines.center, baselines.random):
        saliency_map = method(model, x, 1)["input"]
        assert saliency_map.shape == (2, 1, 4, 16, 16) and torch.isfinite(saliency_map).all(), method
    assert baselines.center(model, x)["input"][0, 0, 2].argmax() == 8 * 16 + 8


def test_meta_saliency_on_clips_leaves_the_model_untouched():
    model = tiny_3d_cnn()
    x = torch.randn(2, 3, 4, 16, 16)
    before = snapshot(model)
    meta = ng.meta_saliency(model, x, 1, lr=0.05, layers=["1", "3"])
    plain = ng.normgrad(model, x, 1, layers=["1", "3"])
    assert meta["3"].shape == (2, 1, 4, 8, 8) and not torch.equal(meta["3"], plain["3"])
    assert_untouched(model, before)


def test_combine_upsamples_clip_maps_trilinearly_and_normalises_over_the_clip():
    maps = {"a": torch.rand(2, 1, 2, 4, 6), "b": torch.rand(2, 1, 4, 8, 12)}
    combined = ng.combine(maps, size=(4, 16, 24))
    assert combined.shape == (2, 1, 4, 16, 24)
    expected = torch.ones(2, 1, 4, 16, 24)
    for saliency_map in maps.values():
        up = torch.nn.functional.interpolate(saliency_map, size=(4, 16, 24), mode="trilinear", align_corners=False)
        low, high = up.amin((1, 2, 3, 4), keepdim=True), up.amax((1, 2, 3, 4), keepdim=True)
        expected *= (up - low) / (high - low)
    torch.testing.assert_close(combined, expected)
    with pytest.raises(ng.NormGradError, match=r"\(T, H, W\)"):
        ng.upsample(maps["a"], (16, 24))


def test_a_batch_of_clips_equals_its_clips():
    model = copy.deepcopy(tiny_3d_cnn()).double()
    x = torch.randn(3, 3, 4, 16, 16, dtype=torch.double)
    for method in ("conv3x3", "layer"):
        batch = ng.saliency(model, x, 1, layers=["2"] if method == "layer" else ["1", "3"], extract=method, aggregate="max")
        for i in range(3):
            alone = ng.saliency(model, x[i : i + 1], 1, layers=list(batch), extract=method, aggregate="max")
            for layer in batch:
                torch.testing.assert_close(batch[layer][i : i + 1], alone[layer])


def write_video(path, frames: int = 10, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """A tiny synthetic video (a white square moving right) through PyAV; returns the frames written."""
    av = pytest.importorskip("av")
    height, width = size
    written = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            frame = np.zeros((height, width, 3), np.uint8)
            frame[10:26, 3 * t : 3 * t + 16] = 255
            written.append(frame)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return np.stack(written)


def test_read_a_video_sampling_frames_evenly(tmp_path):
    written = write_video(tmp_path / "walk.mp4")
    clip = video.read_clip(tmp_path / "walk.mp4", frames=4)
    assert clip.frames.shape == (4, 48, 64, 3) and clip.fps == 8 and clip.name == "walk"
    for got, index in zip(clip.frames, [0, 3, 6, 9]):  # the square's column tells which frame was read (lossy codec: a tolerance)
        assert np.abs(got.astype(int) - written[index]).mean() < 8
    assert video.read_clip(tmp_path / "walk.mp4", frames=50).frames.shape[0] == 10


def test_read_volumes_npy_and_nifti(tmp_path):
    volume = np.random.default_rng(0).normal(size=(12, 20, 24)).astype(np.float32)
    np.save(tmp_path / "ct.npy", volume)
    clip = video.read_clip(tmp_path / "ct.npy", frames=6)
    assert clip.kind == "volume" and clip.frames.shape == (6, 20, 24, 3) and clip.frames.dtype == np.uint8
    nibabel = pytest.importorskip("nibabel")
    nibabel.save(nibabel.Nifti1Image(np.moveaxis(volume, 0, -1), np.eye(4)), str(tmp_path / "mri.nii.gz"))
    nifti = video.read_clip(tmp_path / "mri.nii.gz", frames=6)
    assert nifti.name == "mri" and np.array_equal(nifti.frames, clip.frames)


@pytest.mark.parametrize(
    "array, message",
    [(np.zeros((4, 5)), r"must be \(D, H, W\)"), (np.full((3, 4, 4), np.nan), "NaN"), (np.zeros((3, 4, 4), complex), "real numbers")],
)
def test_bad_volumes_are_one_clear_error(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ng.NormGradError, match=message):
        video.read_clip(tmp_path / "bad.npy")


def test_explain_and_write_a_clip(tmp_path):
    write_video(tmp_path / "walk.mp4", frames=6)
    clip = video.read_clip(tmp_path / "walk.mp4", frames=6)
    model = tiny_3d_cnn()
    result = video.explain_clip(model, clip, layers=["1", "3"], target=2)
    assert result.map.shape == (6, 48, 64) and result.map.min() >= 0 and result.map.max() <= 1 and result.map.std() > 0
    assert result.target == 2 and result.layers == ["1", "3"]
    inputs = video.clip_tensor(clip, Preprocess(size=48))  # the clip's own size: the shorter side is 48
    maps = ng.normgrad(model, inputs, 2, layers=["1", "3"])
    np.testing.assert_allclose(result.map, ng.combine(maps, size=(6, 48, 64))[0, 0].numpy(), rtol=1e-6, atol=1e-7)
    files = video.write_clip(tmp_path / "out", clip, result)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("frame_*.png")) == [f"frame_{i:03d}.png" for i in range(6)]
    with Image.open(out / files["animation"]) as gif:
        assert gif.n_frames == 6 and gif.size == (64, 48)
    with Image.open(out / files["strip"]) as picture:
        assert picture.size == (6 * 64 + 5 * 4, 48)
    np.testing.assert_array_equal(np.load(out / "map.npy"), result.map)
    assert json.loads((out / "summary.json").read_text())["target"]["index"] == 2


def test_cli_explains_a_video_into_a_folder_and_a_page(tmp_path, capsys):
    write_video(tmp_path / "walk.mp4", frames=6)
    out = tmp_path / "maps"
    code = main(
        ["explain", str(tmp_path / "walk.mp4"), "--model", "torchvision:r3d_18", "--weights", "none", "--frames", "4", "--out", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "walk" / "summary.json").read_text())
    assert summary["frames"] == 4 and summary["layers"] == ["layer2", "layer3", "layer4"]
    assert 'src="walk/animation.gif"' in (out / "index.html").read_text()


def test_cli_errors_on_clips_are_one_line(tmp_path, capsys):
    write_video(tmp_path / "walk.mp4", frames=3)
    code = main(["explain", str(tmp_path / "walk.mp4"), str(tmp_path / "missing.mp4"), "--weights", "none", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no such file" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_synthetic_task_marks_the_square_and_scores_literally():
    data = video_task.make_clips(4, seed=3)
    assert data.labels.tolist() == [0, 1, 0, 1] and not data.masks[0].any()
    frames_with_square = data.masks[1].flatten(1).any(1)
    assert int(frames_with_square.sum()) == video_task.SQUARE_FRAMES
    assert data.clips[1, 0][data.masks[1]].mean() > data.clips[1, 0][~data.masks[1]].mean() + 1
    perfect = data.masks[1:2, None].float()  # a map equal to the square: every score is 1
    scores = video_task.score(perfect, data.masks[1:2])
    assert scores.hits.item() == 1 and scores.frame_hits.item() == 1 and scores.mass.item() == pytest.approx(1.0)
    elsewhere = (~data.masks[1:2, None]).float()
    assert video_task.score(elsewhere, data.masks[1:2]).mass.item() == 0
    assert video_task.wilson(5, 10)[1:] == pytest.approx((0.2366, 0.7634), abs=1e-4)
