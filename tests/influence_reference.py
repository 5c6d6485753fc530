"""Literal TracIn references for the tests: autograd on real or per-location weight copies, one example at a time.

Nothing here uses the library's closed forms.  The per-location reference
replaces a layer's output by a sum over locations ``u`` of
``mask_u ⊙ layer_u(x)``, where ``layer_u`` uses its own copy of the weight
(equal values, so the function is unchanged): autograd's gradient with
respect to copy ``u`` is then exactly location ``u``'s term of the weight
gradient, and its dot product with a test gradient is the map's value there.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _layer_forward(module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, weight, bias)
    return F.linear(x, weight, bias)


def _virtual_forward(extract: str, activation: Tensor, weight: Tensor, channels_first: bool) -> Tensor:
    if extract == "scaling":
        return activation * (weight.reshape(1, -1, 1, 1) if channels_first else weight)
    if channels_first:
        return torch.einsum("ij,njhw->nihw", weight, activation)
    return activation @ weight.T


def _masks(output: Tensor, channels_first: bool) -> list[Tensor]:
    """One 0/1 mask per location of ``output``, broadcast over its channels (positions in raster order)."""
    if channels_first:
        grid = output.shape[2:]
        flat = torch.eye(grid.numel(), dtype=output.dtype)
        return [flat[i].reshape(1, 1, *grid) for i in range(grid.numel())]
    positions = output.shape[1:-1]
    flat = torch.eye(positions.numel(), dtype=output.dtype)
    return [flat[i].reshape(1, *positions, 1) for i in range(positions.numel())]


def _parameters(module: nn.Module | None, extract: str, channels: int, dtype: torch.dtype) -> dict[str, Tensor]:
    if extract == "layer":
        values = {"weight": module.weight.detach()}
        if module.bias is not None:
            values["bias"] = module.bias.detach()
        return values
    if extract == "scaling":
        return {"weight": torch.ones(channels, dtype=dtype)}
    return {"weight": torch.eye(channels, dtype=dtype)}


def layer_gradients(model: nn.Module, layer: str, extract: str, x: Tensor, y: Tensor, per_location: bool) -> list[dict[str, Tensor]]:
    """For ONE example: the loss gradient of the layer's (real or virtual) weight, whole or per location (a list).

    The layer's output must be channels first (N, C, H, W) for a Conv2d or a virtual layer on a map, or
    channels last (N, ..., C) for a Linear (vectors, tokens) and a virtual layer after one.
    """
    model = copy.deepcopy(model).eval()
    module = dict(model.named_modules())[layer]
    copies: list[dict[str, Tensor]] = []

    def hook(mod: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        channels_first = output.dim() == 4  # the test models keep 4-D maps channels first
        channels = output.shape[1] if channels_first else output.shape[-1]
        masks = _masks(output, channels_first) if per_location else [torch.ones((), dtype=output.dtype)]
        total = 0
        for mask in masks:
            leaves = {k: v.clone().requires_grad_(True) for k, v in _parameters(mod, extract, channels, output.dtype).items()}
            copies.append(leaves)
            if extract == "layer":
                value = _layer_forward(mod, inputs[0], leaves["weight"], leaves.get("bias"))
            else:
                value = _virtual_forward(extract, output, leaves["weight"], channels_first)
            total = total + mask * value
        return total

    handle = module.register_forward_hook(hook)
    try:
        loss = F.cross_entropy(model(x[None]), y[None].long())
    finally:
        handle.remove()
    leaves = [leaf for c in copies for leaf in c.values()]
    grads = iter(torch.autograd.grad(loss, leaves, allow_unused=True))
    result = []
    for c in copies:
        result.append({k: (g if (g := next(grads)) is not None else torch.zeros_like(v)) for k, v in c.items()})
    return result


def dot(a: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def literal_scores(model, layer, extract, train_x, train_y, test_x, test_y, checkpoints, lrs) -> Tensor:
    """TracInCP (N, T) by per-example autograd on the layer's weight at each checkpoint, then dot products."""
    scores = torch.zeros(len(train_x), len(test_x), dtype=torch.float64)
    for state, lr in zip(checkpoints, lrs):
        at = copy.deepcopy(model)
        at.load_state_dict(state)
        tests = [layer_gradients(at, layer, extract, x, y, False)[0] for x, y in zip(test_x, test_y)]
        for n, (x, y) in enumerate(zip(train_x, train_y)):
            train = layer_gradients(at, layer, extract, x, y, False)[0]
            for t, test in enumerate(tests):
                scores[n, t] += lr * dot(train, test)
    return scores


def literal_maps(model, layer, extract, train_x, train_y, test_x, test_y, checkpoints, lrs) -> Tensor:
    """Per-location TracInCP terms (N, T, L) by per-location weight copies, L locations in raster order."""
    rows = []
    for x, y in zip(train_x, train_y):
        total = None
        for state, lr in zip(checkpoints, lrs):
            at = copy.deepcopy(model)
            at.load_state_dict(state)
            tests = [layer_gradients(at, layer, extract, tx, ty, False)[0] for tx, ty in zip(test_x, test_y)]
            local = layer_gradients(at, layer, extract, x, y, True)
            terms = torch.stack([torch.stack([lr * dot(g, test) for g in local]) for test in tests])
            total = terms if total is None else total + terms
        rows.append(total)
    return torch.stack(rows)


def literal_self_maps(model, layer, extract, train_x, train_y, checkpoints, lrs) -> Tensor:
    """Per-location self-influence terms (N, L): location u's weight-gradient term dotted with the whole example gradient."""
    rows = []
    for x, y in zip(train_x, train_y):
        total = None
        for state, lr in zip(checkpoints, lrs):
            at = copy.deepcopy(model)
            at.load_state_dict(state)
            whole = layer_gradients(at, layer, extract, x, y, False)[0]
            terms = torch.stack([lr * dot(g, whole) for g in layer_gradients(at, layer, extract, x, y, True)])
            total = terms if total is None else total + terms
        rows.append(total)
    return torch.stack(rows)
