"""Explaining a clip: preprocess its frames, one call of any registered method, layers combined over the clip.

The model sees the clip as (1, 3, T, h, w): every frame resized to the
model's input size (the shorter side to ``preprocess.size``, aspect kept,
or its fixed size), normalised with the model's statistics (Kinetics' for
torchvision's video models).  Each layer's map (1, 1, t, h', w') is
upsampled trilinearly to the clip's T × H × W, min-max normalised over the
whole clip (so that frames compare: a frame without the object stays
dark) and the layers combined (:func:`normgrad.combine.combine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normgrad.combine import combine
from normgrad.engine.default_layers import auto_layers
from normgrad.engine.describe import model_device
from normgrad.errors import NormGradError
from normgrad.models import LoadedModel, Preprocess
from normgrad.registry import get_method
from normgrad.video.read import Clip

MAX_INPUT_VALUES = 64 * 1024 * 1024  # the model input of one clip: 3·T·h·w values at most (16 frames of 1024²)


@dataclass
class ClipResult:
    """The combined map (T, H, W) float32 in [0, 1] at the clip's frames and pixels, per-layer maps, target and predictions."""

    map: np.ndarray
    layer_maps: dict[str, Tensor] = field(default_factory=dict)
    target: int = 0
    target_name: str = ""
    predictions: list[tuple[str, float]] = field(default_factory=list)
    method: str = "normgrad"
    layers: list[str] = field(default_factory=list)


def clip_tensor(clip: Clip, preprocess: Preprocess) -> Tensor:
    """The model input (1, 3, T, h, w) of a clip: frames resized (bilinear, antialiased) and normalised."""
    frames, height, width = clip.frames.shape[0], *clip.frames.shape[1:3]
    size = preprocess.input_size(width, height)
    if 3 * frames * size[0] * size[1] > MAX_INPUT_VALUES:
        raise NormGradError(f"a clip of {frames} frames at {size[0]}x{size[1]} is over {MAX_INPUT_VALUES} input values; use fewer frames")
    pixels = torch.from_numpy(np.ascontiguousarray(clip.frames)).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
    if tuple(pixels.shape[-2:]) != tuple(size):
        pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    return ((pixels - mean) / std).permute(1, 0, 2, 3)[None].contiguous()  # (1, 3, T, h, w)


def explain_clip(
    model: LoadedModel | nn.Module,
    clip: Clip,
    *,
    method: str = "normgrad",
    layers: list[str] | None = None,
    target: int | None = None,
    combine_mode: str = "product",
    preprocess: Preprocess | None = None,
    lr: float | None = None,
    top_k: int = 5,
) -> ClipResult:
    """The map of ``clip`` for ``target`` (default: the predicted class) by ``method`` at ``layers`` (default: the stage outputs)."""
    loaded = model if isinstance(model, LoadedModel) else None
    network = loaded.model if loaded is not None else model
    preprocess = preprocess or (loaded.preprocess if loaded is not None else Preprocess(size=min(clip.frames.shape[1:3])))
    chosen = get_method(method) if lr is None else get_method(method, lr=lr)
    device = model_device(network)
    inputs = clip_tensor(clip, preprocess).to(device)
    channels = _input_channels(network)
    if inputs.shape[1] != channels:  # a model of grey volumes: one channel
        inputs = inputs.mean(1, keepdim=True).expand(-1, channels, -1, -1, -1).contiguous()
    with torch.no_grad():
        logits = network.eval()(inputs)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise NormGradError(f"explaining a clip needs a classifier with outputs (N, classes); got {getattr(logits, 'shape', type(logits))}")
    probabilities = logits.float().softmax(1)[0]
    target = int(probabilities.argmax()) if target is None else int(target)
    if not 0 <= target < probabilities.numel():
        raise NormGradError(f"target class {target} is out of range: the model has {probabilities.numel()} classes")
    names = loaded.class_names if loaded is not None else [f"class {i}" for i in range(probabilities.numel())]
    layers = list(layers) if layers else (auto_layers(network, inputs) if chosen.uses_layers else None)
    maps = chosen(network, inputs, target, layers=layers)
    frames, height, width = clip.frames.shape[:3]
    combined = combine(maps, size=(frames, height, width), mode=combine_mode)[0, 0]
    top = probabilities.topk(min(top_k, probabilities.numel()))
    predictions = [(names[int(i)] if int(i) < len(names) else f"class {int(i)}", float(p)) for p, i in zip(top.values, top.indices)]
    return ClipResult(
        combined.detach().float().cpu().numpy(),
        {name: m.detach().cpu() for name, m in maps.items()},
        target,
        names[target] if target < len(names) else f"class {target}",
        predictions,
        chosen.name,
        list(maps),
    )


DEFAULT_FRAMES = 16  # what torchvision's video models are trained on (MViT takes exactly its temporal size)


def example_input(model: nn.Module, height: int, width: int) -> Tensor:
    """A zero input of the right rank for ``model``: (1, C, T, H, W) when its first convolution is a Conv3d, else (1, 3, H, W)."""
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if isinstance(first, nn.Conv3d):
        steps = getattr(getattr(model, "pos_encoding", None), "temporal_size", None)  # MViT: time steps of its patch grid
        frames = DEFAULT_FRAMES if steps is None else steps * model.conv_proj.stride[0]
        return torch.zeros(1, first.in_channels, frames, height, width)
    return torch.zeros(1, 3, height, width)


def _input_channels(model: nn.Module) -> int:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv3d)), None)
    return first.in_channels if first is not None else 3


__all__ = ["ClipResult", "clip_tensor", "example_input", "explain_clip"]
