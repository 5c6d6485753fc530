"""The batch size a run uses when none is given: from the activations' memory per image and the device.

One no-gradient forward of one image at the largest input size the run explains measures the activation
memory per image ``a`` (every module's output, bytes); a saliency pass keeps about ``BACKWARD_FACTOR × a``
(the activations and their gradients).  Then:

* **CPU**: the largest batch ≤ ``CPU_MAX`` whose working set stays under ``CPU_MEMORY_SHARE`` of the memory
  available (``MemAvailable``).  On 2 cores the engine alone on 400×300 photos (explain's default,
  EfficientNet-Lite0) took 12.0 s for 192 photos at batch 2, 11.2 s at 4, 17.3 s at 8 and 21.4 s at 16:
  larger batches spill the activations out of the caches, and a batch of 4 already amortises the per-call
  overhead.  (A fixed 2 GiB budget, used before, gave batch 1 for the largest input, 448 × 597, whose
  estimate is 1.5 GiB: ``normgrad explain`` then took 45.4 s for those 192 photos, against 32.5 s at the
  batch of 3 this rule gives on a 24 GiB machine.);
* **CUDA**: the largest batch (≤ ``GPU_MAX``) whose working set fills ``GPU_SHARE`` of the free memory;
* anything else: ``CPU_MAX``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from normgrad.engine.model_state import eval_mode

CPU_MAX = 4
CPU_MEMORY_SHARE = 0.25
GPU_MAX = 128
GPU_SHARE = 0.5
BACKWARD_FACTOR = 3  # activations, their gradients, and the engine's per-layer products


def activation_bytes(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Bytes of every leaf module's tensor outputs for ``example`` (one forward, no gradient, eval mode)."""
    total = 0

    def count(module: Any, inputs: Any, output: Any) -> None:
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else [output]:
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad(), eval_mode(model):
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return total


def available_memory() -> int:
    """Bytes of memory available to new work: Linux's ``MemAvailable``, else the free pages, else 8 GiB."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 8 << 30


def largest_input(preprocess: Any) -> tuple[int, int]:
    """(H, W) of the largest input the preprocessing gives a photo of aspect 4:3 (the fixed size if there is one)."""
    if getattr(preprocess, "fixed_size", None) is not None:
        return tuple(preprocess.fixed_size)
    shorter = preprocess.max_size or preprocess.size
    return shorter, shorter * 4 // 3


def choose_batch_size(loaded: Any, method: Any, setup: Any, device: str) -> int:
    """The batch size for ``device`` (see the module docstring); 1 for a model-free method's trivial work is not needed."""
    key = ("batch_size", str(device), getattr(setup.preprocess, "max_size", None), getattr(setup.preprocess, "size", None))
    if key in loaded.cache:
        return loaded.cache[key]
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda") or not getattr(method, "needs_model", True):
        return CPU_MAX
    example = torch.zeros(1, 3, *largest_input(setup.preprocess), device=device)
    try:
        per_image = BACKWARD_FACTOR * max(1, activation_bytes(loaded.model, example))
    except Exception:  # the model refuses this size: the run will say so per image
        return 1
    if kind == "cpu":
        size = max(1, min(CPU_MAX, int(CPU_MEMORY_SHARE * available_memory()) // per_image))
    else:
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        size = max(1, min(GPU_MAX, int(GPU_SHARE * free) // per_image))
    loaded.cache[key] = int(size)
    return int(size)
