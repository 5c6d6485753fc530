"""The architecture matrix: every method, at the default layers, on torchvision, timm and Hugging Face families.

Per architecture (random weights, a small non-square input where the model
takes one): the default layers lie at more than one depth and never in the
stem or inside attention; NormGrad, selective, ``extract="layer"`` (on every
Conv2d and Linear: channels-last and token Linears included), a Unit target
on a default layer, meta-saliency and Captum's LayerNormGrad give
(N, 1, h, w) maps whose h × w is a grid of the input, oriented as the input
(h < w for a wide input); a batch equals its images (float64, so that CPU
rounding cannot flip a ReLU); the model is bitwise untouched; a layer
without a map raises a NormGradError that says why and names one that has.

Video and volume models (clips (N, 3, T, H, W)) give (N, 1, t, h, w) maps
whose t is a grid of the T frames, and NormGrad at two default layers
equals ``‖g‖·‖a‖`` computed from plain hooks.

A few cheap architectures run by default; the rest are marked ``slow``
(``pytest -m slow``).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import normgrad as ng
from architectures import ARCHITECTURES, FAST, informative
from brute_force import hook_norm_product
from normgrad.captum import LayerNormGrad
from normgrad.engine.default_layers import auto_layers
from normgrad.engine.describe import describe_layers
from normgrad.engine.layouts import grid_fit, time_fit
from normgrad.segmentation import Region
from test_engine import assert_untouched, snapshot

PARAMS = [pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in ARCHITECTURES]


@pytest.fixture(scope="module")
def built() -> dict:
    return {}


def get(built: dict, name: str) -> tuple[nn.Module, torch.Tensor]:
    if ARCHITECTURES[name].requires:
        pytest.importorskip(ARCHITECTURES[name].requires)
    if name not in built:
        torch.manual_seed(0)
        model = informative(ARCHITECTURES[name].build()).eval()
        x = torch.randn(2, *ARCHITECTURES[name].shape)
        with torch.no_grad():  # transformers installs its output-capturing hooks on the first forward: the model as users hold it
            model(x[:1])
        built[name] = (model, x)
    return built[name]


def assert_maps_on_grid(maps: dict, x: torch.Tensor, where: str, model: nn.Module | None = None) -> None:
    """(N, 1, h, w) maps on a grid of the input, oriented as the input (a convolution may lose a few more positions).

    Videos and volumes: (N, 1, t, h, w) maps, t a grid of the T frames (any stride of its own).
    """
    n, height, width = x.shape[0], *x.shape[-2:]
    modules = dict(model.named_modules()) if model is not None else {}
    assert maps, where
    for layer, saliency_map in maps.items():
        assert saliency_map.dim() == x.dim() and saliency_map.shape[:2] == (n, 1), f"{where} {layer} {tuple(saliency_map.shape)}"
        h, w = saliency_map.shape[-2:]
        convolution = isinstance(modules.get(layer), (nn.Conv2d, nn.Conv3d))
        if x.dim() == 5:
            assert time_fit(saliency_map.shape[2], x.shape[2], convolution), (
                f"{where} {layer}: {tuple(saliency_map.shape)} for {x.shape[2]} frames"
            )
        if convolution:
            assert h <= height and w <= width, f"{where} {layer}: {h}×{w}"
        else:
            assert grid_fit(h, w, height, width, True), f"{where} {layer}: {h}×{w} is not a grid of {height}×{width}"
        if height != width and h * w > 1:
            assert (h <= w) == (height <= width), f"{where} {layer}: {h}×{w} is transposed for a {height}×{width} input"
        assert torch.isfinite(saliency_map).all(), f"{where} {layer}"


@pytest.mark.parametrize("name", PARAMS)
def test_every_method_on_the_default_layers(built, name):
    arch = ARCHITECTURES[name]
    model, x = get(built, name)
    before = snapshot(model)
    caches = {n: dict(m.attention_bias_cache) for n, m in model.named_modules() if hasattr(m, "attention_bias_cache")}
    layers = auto_layers(model, x[:1])
    assert len(layers) >= 2, layers
    assert not any(part in layer for layer in layers for part in ("attn", "attention", "patch_embed", "stem")), layers

    maps = ng.normgrad(model, x, arch.target, layers=layers)
    assert list(maps) == layers
    assert_maps_on_grid(maps, x, "normgrad")
    assert all(m.abs().sum() > 0 for m in maps.values()), "uninformative maps"
    assert_maps_on_grid(ng.normgrad_selective(model, x, arch.target, layers=layers), x, "selective")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers matched by type without a map are skipped with a warning
        own = ng.normgrad(model, x, arch.target, layers=[nn.Conv2d, nn.Conv3d, nn.Linear], extract="layer")
    assert_maps_on_grid(own, x, "layer extract", model)
    modules = dict(model.named_modules())
    with_maps = [
        i.name
        for i in describe_layers(model, x[:1])
        if i.calls == 1 and i.layout is not None and isinstance(modules.get(i.name), (nn.Conv2d, nn.Conv3d, nn.Linear))
    ]
    assert sorted(own) == sorted(with_maps), "every Conv2d, Conv3d and Linear with a map is explained with its own weights"

    unit = ng.normgrad(model, x, ng.Unit(layers[-1], 0, (0,) * (x.dim() - 2)), layers=layers[0])
    assert_maps_on_grid(unit, x, "unit target")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = ng.meta_saliency(model, x, arch.target, lr=1e-2, layers=layers)
    assert_maps_on_grid(meta, x, "meta")

    module = dict(model.named_modules())[layers[0]]
    attribution = LayerNormGrad(model, module).attribute(x, target=arch.target)
    torch.testing.assert_close(attribution, maps[layers[0]], rtol=0, atol=0)
    assert_untouched(model, before)
    for module_name, cache in caches.items():  # timm's eval-mode bias caches: nothing of ours is left in them
        assert dict(dict(model.named_modules())[module_name].attention_bias_cache).keys() == cache.keys()


@pytest.mark.parametrize("name", PARAMS)
def test_a_batch_equals_its_images(built, name):
    """In float64: CPU kernels may round a batch and a single image differently, which float32 ReLUs can amplify."""
    arch = ARCHITECTURES[name]
    model, x = get(built, name)
    model, x = copy.deepcopy(model).double(), x.double()
    layers = auto_layers(model, x[:1])
    batch = ng.normgrad(model, x, arch.target, layers=layers)
    for i in range(x.shape[0]):
        alone = ng.normgrad(model, x[i : i + 1], arch.target, layers=layers)
        for layer in layers:
            scale = alone[layer].abs().max()
            torch.testing.assert_close(batch[layer][i : i + 1], alone[layer], rtol=1e-5, atol=1e-6 * float(scale), msg=f"{name} {layer}")


@pytest.mark.parametrize("name", PARAMS)
def test_layers_without_a_map_are_refused_with_a_reason(built, name):
    model, x = get(built, name)
    infos = describe_layers(model, x[:1])
    without = [
        i for i in infos if i.calls == 1 and i.output_shape and len(i.output_shape) > 2 and i.layout is None and i.note.startswith("no map")
    ]
    if not without:
        pytest.skip("every layer of this architecture has a map")
    info = without[0]
    with pytest.raises(ng.NormGradError, match=r"(folds windows|not a grid|no map).*for example '[^']+'"):
        ng.normgrad(model, x, ARCHITECTURES[name].target, layers=[info.name])


@pytest.mark.parametrize("name", PARAMS)
def test_meta_saliency_with_unused_parameters(built, name):
    arch = ARCHITECTURES[name]
    if not arch.unused_parameters:
        pytest.skip("every parameter takes part in the loss")
    model, x = get(built, name)
    layers = auto_layers(model, x[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # some parameters unused is not worth a warning; all unused would be
        meta = ng.meta_saliency(model, x[:1], arch.target, lr=1e-2, layers=layers[-1:])
    assert_maps_on_grid(meta, x[:1], "meta")


def written_out_objective(target, output, x: torch.Tensor) -> torch.Tensor:
    """The objective of a matrix target, written out: the predicted class's logit, a callable, or a region's summed scores."""
    if callable(target):
        return target(output)
    scores = output.logits if hasattr(output, "logits") else output["out"] if isinstance(output, dict) else output
    if isinstance(target, Region):  # the class's scores, bilinearly upsampled to the input, summed inside the box
        x0, y0, x1, y1 = target.box
        plane = torch.nn.functional.interpolate(scores[:, target.cls : target.cls + 1], x.shape[-2:], mode="bilinear", align_corners=False)
        return plane[:, 0, y0:y1, x0:x1].sum((1, 2))
    return scores.gather(1, scores.detach().argmax(1, keepdim=True))[:, 0]


@pytest.mark.parametrize("name", PARAMS)
def test_normgrad_equals_a_hook_based_norm_product(built, name):
    """At the first and last default layers: the engine's map equals ‖g‖·‖a‖ taken with a hook and autograd.grad."""
    arch = ARCHITECTURES[name]
    if arch.frames is not None:
        pytest.skip("clips and volumes: test_video_normgrad_equals_hook_based_norms takes their t × h × w grid")
    model, x = get(built, name)
    layers = auto_layers(model, x[:1])
    modules = dict(model.named_modules())
    maps = ng.normgrad(model, x, arch.target, layers=[layers[0], layers[-1]])
    for layer, saliency_map in maps.items():
        reference = hook_norm_product(
            model, x, lambda output, images: written_out_objective(arch.target, output, images), modules[layer], saliency_map.shape[-2:]
        )
        scale = float(reference.abs().max())
        assert scale > 0, f"{name} {layer}: the reference map is zero"
        torch.testing.assert_close(saliency_map, reference, rtol=1e-4, atol=1e-5 * scale, msg=f"{name} {layer}")


VOLUMES = [param for param in PARAMS if ARCHITECTURES[param.values[0]].frames is not None]


def hook_based_normgrad(model: nn.Module, x: torch.Tensor, target, layers: list[str]) -> dict[str, torch.Tensor]:
    """``‖∂J/∂a_u‖·‖a_u‖`` from plain hooks: channels are dimension 1 of 5-D maps; tokens (after MViT's class token) lie on the
    ``[t, h, w]`` grid the block returns beside them."""
    modules = dict(model.named_modules())
    seen: dict[str, tuple] = {}

    def hook(name):
        def keep(module, inputs, output):
            seen[name] = (output, None) if isinstance(output, torch.Tensor) else (output[0], tuple(output[1]))

        return keep

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
    try:
        output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    scores = output.gather(1, output.argmax(1, keepdim=True))[:, 0] if target is None else target(output)
    grads = torch.autograd.grad(scores.sum(), [seen[name][0] for name in layers])
    maps = {}
    for name, grad in zip(layers, grads):
        activation, sizes = seen[name]
        if activation.dim() == 5:
            maps[name] = (grad.norm(dim=1) * activation.norm(dim=1))[:, None]
        else:
            grid = (grad[:, 1:].norm(dim=2) * activation[:, 1:].norm(dim=2)).reshape(x.shape[0], *sizes)
            maps[name] = grid[:, None]
    return maps


@pytest.mark.parametrize("name", VOLUMES)
def test_video_normgrad_equals_hook_based_norms(built, name):
    arch = ARCHITECTURES[name]
    model, x = get(built, name)
    model, x = copy.deepcopy(model).double(), x.double()
    layers = auto_layers(model, x[:1])[-2:]
    maps = ng.normgrad(model, x, arch.target, layers=layers)
    expected = hook_based_normgrad(model, x, arch.target, layers)
    for layer in layers:
        assert maps[layer].shape == expected[layer].shape and maps[layer].dim() == 5, layer
        assert maps[layer].flatten(2).std(2).min() > 0, f"{layer}: a constant map"
        torch.testing.assert_close(maps[layer], expected[layer].float(), rtol=1e-5, atol=1e-7 * float(expected[layer].detach().abs().max()))
