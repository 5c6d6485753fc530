"""Any normgrad method inside Quantus (optional extra ``quantus``): an ``explain_func`` for every Quantus metric.

>>> import quantus
>>> from normgrad.quantus import explain_func
>>> metric = quantus.FaithfulnessCorrelation(nr_runs=20, subset_size=64)
>>> scores = metric(model=model, x_batch=x, y_batch=y, explain_func=explain_func,
...                 explain_func_kwargs={"method": "normgrad", "layers": ["layer3", "layer4"]})

Quantus calls ``explain_func(model=..., inputs=..., targets=..., **explain_func_kwargs)``
with NumPy arrays (N, C, H, W) and (N,) class indices and expects NumPy
attributions it can broadcast to the inputs; this returns the (N, 1, H, W)
float32 map ``normgrad explain`` would write at the input's size:

* ``method``: any registry name (``normgrad``, ``selective``, ``meta``,
  ``meta:selective``, ``conv3x3+max``, ``gradient``, …) or ``"default"``, the
  explain default's rule (:mod:`normgrad.defaults`) applied to this model;
* ``layers``: module names for layer methods (default: the model's stage
  outputs, :func:`normgrad.engine.default_layers.auto_layers`; for ``"default"``,
  the rule's own layers);
* ``combine``: how layers combine (``product``, ``geometric``, ``sum``);
* ``lr``, ``steps``: the inner step of meta variants.

The model is used as given (its device; eval mode for the pass, its flags
restored, as every normgrad method does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

import normgrad as ng
from normgrad.engine.default_layers import auto_layers
from normgrad.errors import NormGradError
from normgrad.registry import get_method


def explain_func(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    *,
    method: str = "normgrad",
    layers: Sequence[str] | None = None,
    combine: str = "product",
    lr: float = 2.5e-3,
    steps: int = 1,
    seed: int = 0,
    **_: Any,
) -> np.ndarray:
    """Quantus's ``explain_func``: (N, 1, H, W) float32 maps of ``method`` for ``targets``; see the module docstring."""
    if not isinstance(model, nn.Module):
        raise NormGradError(f"normgrad's explain_func needs a PyTorch model; got {type(model).__name__}")
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=device)
    if x.dim() != 4:
        raise NormGradError(f"inputs must be images (N, C, H, W); got shape {tuple(x.shape)}")
    y = torch.as_tensor(np.asarray(targets).reshape(-1), dtype=torch.long, device=device)
    if len(y) == 1 and len(x) > 1:
        y = y.expand(len(x))
    if len(y) != len(x):
        raise NormGradError(f"one target per input: {len(x)} inputs, {len(y)} targets")
    size = tuple(x.shape[-2:])
    if method == "default":
        from normgrad.defaults import choose_layers, layered, probe

        chosen = choose_layers(probe(model, x[:1]))
        function, layer_names = layered(chosen), list(layers or chosen)
    else:
        function = get_method(method, lr=lr, steps=steps)
        layer_names = list(layers) if layers else (auto_layers(model, x[:1]) if function.uses_layers else None)
    with torch.enable_grad():
        if not function.needs_model:
            raw = function(model, x, y, seed=seed) if function.name == "random" else function(model, x, y)
        else:
            raw = function(model, x, y, layers=layer_names) if function.uses_layers else function(model, x, y)
    raw = {name: m.detach().float().cpu() for name, m in raw.items()}
    final = ng.combine(raw, size=size, mode=combine) if function.uses_layers else ng.upsample(raw["input"], size)
    return final.numpy().astype(np.float32)
