"""The memory layout of the run's input batches: channels-last where the model's depthwise convolutions run faster so.

On the CPU, PyTorch runs a convolution on a channels-last input (``N, H, W, C`` in memory) with oneDNN's
NHWC kernels, and its output stays channels-last, so a whole convolutional trunk follows.  For networks built
of depthwise convolutions that is faster; for dense ones it is not.  Measured on 2 cores (batch 2 at 224², or
explain's batch of 3 at 300×400 for EfficientNet-Lite0; the engine's default layers, ms per batch, best of 3):

============================  =========  ============  =====
model                         NCHW       channels-last  gain
============================  =========  ============  =====
EfficientNet-Lite0 (300×400)  50         37–43          1.2×
timm efficientnet_b0          104        82             1.3×
torchvision mobilenet_v3_s    32         28             1.1×
torchvision resnet50          258        275            0.9×
timm convnext_tiny            251        278            0.9×
torchvision vgg11             386        361            1.1×
============================  =========  ============  =====

So the run passes channels-last batches only where both hold (:func:`input_layout`, decided once per run):

* the model is depthwise-heavy: at least a third of its ``Conv2d`` modules, and at least 4, are depthwise
  (``groups == in_channels > 1``), without a ``LayerNorm`` over channels (ConvNeXt's blocks, slower above);
* on the example, the model accepts a channels-last input and its output equals the NCHW output up to float32
  rounding (``rtol = 1e-4`` of the output's largest value): a model whose code assumes NCHW memory (``view`` on
  an activation) keeps NCHW rather than fail or differ.  A model that refuses a channels-last batch of another
  size later gets that batch, and the rest of the run, in NCHW (:class:`~normgrad.run.loop.BatchLoop`).

The maps are the same computation in another order of float32 sums: they differ from the NCHW maps by float32
rounding only (≤ 1e-6 of the largest value on the depthwise models above).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from normgrad.engine.model_state import eval_mode
from normgrad.run.batch_size import largest_input

MIN_DEPTHWISE = 4
DEPTHWISE_SHARE = 1 / 3
RTOL = 1e-4


def depthwise_heavy(model: nn.Module) -> bool:
    """Whether at least a third of ``model``'s ``Conv2d`` modules (and at least 4) are depthwise, with no LayerNorm."""
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convolutions if m.groups > 1 and m.groups == m.in_channels]
    if any(isinstance(m, nn.LayerNorm) or "LayerNorm" in type(m).__name__ for m in model.modules()):
        return False
    return len(depthwise) >= MIN_DEPTHWISE and len(depthwise) >= DEPTHWISE_SHARE * len(convolutions)


def input_layout(model: nn.Module, example: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` where the run's batches should use it (see the module docstring), else
    ``torch.contiguous_format``.  ``example``: one input of the run, (1, C, H, W) on the model's device."""
    if example.dim() != 4 or example.device.type != "cpu" or not depthwise_heavy(model):
        return torch.contiguous_format
    try:
        with torch.no_grad(), eval_mode(model):
            usual = _logits(model(example))
            other = _logits(model(example.contiguous(memory_format=torch.channels_last)))
    except Exception:  # noqa: BLE001 - the model refuses channels-last (or this example): keep the usual layout
        return torch.contiguous_format
    if usual is None or other is None or usual.shape != other.shape or not torch.isfinite(usual).all():
        return torch.contiguous_format
    scale = usual.abs().max().clamp_min(torch.finfo(usual.dtype).tiny)
    if ((usual - other).abs().max() > RTOL * scale).item():
        return torch.contiguous_format
    return torch.channels_last


def run_layout(loaded: Any, preprocess: Any, device: str) -> torch.memory_format:
    """:func:`input_layout` for a run: on one seeded random input of the largest size ``preprocess`` gives (that of the
    automatic batch size), decided once per loaded model, device and input sizes (cached in ``loaded.cache``)."""
    key = ("layout", str(device), getattr(preprocess, "max_size", None), getattr(preprocess, "size", None))
    if key not in loaded.cache:
        example = torch.rand(1, 3, *largest_input(preprocess), generator=torch.Generator().manual_seed(0)).to(device)
        loaded.cache[key] = input_layout(loaded.model, example)
    return loaded.cache[key]


def _logits(output: Any) -> torch.Tensor | None:
    """The tensor a model's output carries (a tensor, a Hugging Face output's ``logits``, a tuple's first)."""
    if isinstance(output, torch.Tensor):
        return output.float()
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits.float()
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0].float()
    return None
