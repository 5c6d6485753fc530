"""Brute-force definitions of every extract × aggregate, for the tests.

Each virtual layer is inserted with its own weights *per sample and per
location* (leaves initialised so that the network's function is
unchanged).  Autograd's gradient with respect to the copy at location
``u`` is then exactly the per-location contribution — the explicit outer
product or unfolded patch term — which is aggregated entry by entry.
Nothing here uses the closed forms of the library.

Videos and volumes (N, C, T, H, W) work the same with one more grid axis:
patches are read by explicit indexing (one slice per kernel offset), the
virtual 3×3 layers are 3×3×3.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PREFIX_TOKENS = 0  # class/register tokens before the grid tokens (set by token tests)
GRID: tuple[int, int] | None = None  # the token grid (h, w); None: square
CHANNELS_LAST = False  # 4-D activations are (N, H, W, C) (set by channels-last tests)


def aggregate_explicit(contribution: Tensor, aggregate: str, grid_dims: int = 2) -> Tensor:
    """Aggregate an explicit (N, h, w, ...) (or (N, t, h, w, ...)) contribution tensor to an (N, 1, h, w) (or (N, 1, t, h, w)) map."""
    axis = 1 + grid_dims
    flat = contribution.flatten(axis)
    if aggregate == "norm":
        out = flat.norm(dim=axis)
    elif aggregate == "positive_norm":
        out = flat.clamp_min(0).norm(dim=axis)
    elif aggregate == "sum":
        out = flat.sum(axis)
    elif aggregate == "max":
        out = flat.amax(axis)
    else:
        raise ValueError(aggregate)
    return out[:, None]


def explicit_patches(x: Tensor, kernel: tuple, stride: tuple, dilation: tuple) -> Tensor:
    """Receptive-field patches of an already padded (N, C, *grid) tensor, one slice per kernel offset: (N, C, *kernel, *out)."""
    grid = x.shape[2:]
    out = [(grid[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(len(grid))]
    slices = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        index = tuple(
            slice(offset[i] * dilation[i], offset[i] * dilation[i] + stride[i] * (out[i] - 1) + 1, stride[i]) for i in range(len(grid))
        )
        slices.append(x[(slice(None), slice(None), *index)])
    return torch.stack(slices, 2).unflatten(2, tuple(kernel))


class VirtualLayer:
    """A virtual layer applied to an NCHW (or NCTHW) activation, with per-(sample, location) weights."""

    def __init__(self, extract: str, activation: Tensor) -> None:
        if activation.dim() == 5:
            self._init_volume(extract, activation)
            return
        self.volume = False
        n, c, h, w = activation.shape
        self.extract, self.shape = extract, (n, c, h, w)
        opts = {"dtype": activation.dtype, "device": activation.device}
        if extract == "scaling":
            weight = torch.ones(n, h, w, c, **opts)
        elif extract == "conv1x1":
            weight = torch.eye(c, **opts).expand(n, h, w, c, c).clone()
        elif extract == "conv3x3":
            weight = torch.zeros(n, h, w, c, c, 3, 3, **opts)
            weight[..., torch.arange(c), torch.arange(c), 1, 1] = 1.0
        elif extract == "depthwise3x3":
            weight = torch.zeros(n, h, w, c, 3, 3, **opts)
            weight[..., 1, 1] = 1.0
        elif extract == "bias":
            weight = torch.zeros(n, h, w, c, **opts)
        else:
            raise ValueError(extract)
        self.weight = weight.requires_grad_(True)

    def _init_volume(self, extract: str, activation: Tensor) -> None:
        n, c, *grid = activation.shape
        self.extract, self.shape, self.volume = extract, activation.shape, True
        opts = {"dtype": activation.dtype, "device": activation.device}
        if extract in ("scaling", "bias"):
            weight = (torch.ones if extract == "scaling" else torch.zeros)(n, *grid, c, **opts)
        elif extract == "conv1x1":
            weight = torch.eye(c, **opts).expand(n, *grid, c, c).clone()
        elif extract == "conv3x3":
            weight = torch.zeros(n, *grid, c, c, 3, 3, 3, **opts)
            weight[..., torch.arange(c), torch.arange(c), 1, 1, 1] = 1.0
        elif extract == "depthwise3x3":
            weight = torch.zeros(n, *grid, c, 3, 3, 3, **opts)
            weight[..., 1, 1, 1] = 1.0
        else:
            raise ValueError(extract)
        self.weight = weight.requires_grad_(True)

    def _call_volume(self, a: Tensor) -> Tensor:
        wt = self.weight
        if self.extract == "scaling":
            return a * wt.movedim(-1, 1)
        if self.extract == "bias":
            return a + wt.movedim(-1, 1)
        if self.extract == "conv1x1":
            return torch.einsum("nthwoc,ncthw->nothw", wt, a)
        patches = explicit_patches(F.pad(a, (1,) * 6), (3, 3, 3), (1, 1, 1), (1, 1, 1))  # zero padded
        if self.extract == "conv3x3":
            return torch.einsum("nthwocijk,ncijkthw->nothw", wt, patches)
        return torch.einsum("nthwcijk,ncijkthw->ncthw", wt, patches)  # depthwise3x3x3

    def __call__(self, a: Tensor) -> Tensor:
        if self.volume:
            return self._call_volume(a)
        n, c, h, w = self.shape
        wt = self.weight
        if self.extract == "scaling":
            return a * wt.permute(0, 3, 1, 2)
        if self.extract == "bias":
            return a + wt.permute(0, 3, 1, 2)
        if self.extract == "conv1x1":
            return torch.einsum("nhwoc,nchw->nohw", wt, a)
        patches = F.unfold(a, 3, padding=1).view(n, c, 3, 3, h, w)  # zero padded patches
        if self.extract == "conv3x3":
            return torch.einsum("nhwocij,ncijhw->nohw", wt, patches)
        return torch.einsum("nhwcij,ncijhw->nchw", wt, patches)  # depthwise3x3

    def contribution(self, grad_weight: Tensor) -> Tensor:
        return grad_weight  # (N, h, w, ...): the explicit per-location term


def unfold_conv(conv: nn.Conv2d, x: Tensor, output_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Re-run a Conv2d with one weight copy per (sample, output location).

    Returns ``(output, per_location_weight)``; the gradient of ``J`` with respect
    to the copy at ``u`` is the layer's per-location weight-gradient term
    ``g_u P_u(x)ᵀ`` (per group).
    """
    pad = tuple(conv._reversed_padding_repeated_twice)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    h_out, w_out = output_size
    expected = _out(x.shape[-2], pad[2] + pad[3], conv), _out(x.shape[-1], pad[0] + pad[1], conv, 1)
    if expected != (h_out, w_out):  # timm Conv2dSame: TensorFlow SAME padding
        pad = _tf_same(x.shape[-2:], conv)
    padded = F.pad(x, pad, mode=mode) if any(pad) else x
    n, groups = x.shape[0], conv.groups
    patches = F.unfold(padded, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
    patches = patches.view(n, groups, -1, h_out, w_out)  # (N, G, Cin/G*k*k, h, w)
    weight = conv.weight.detach().reshape(groups, conv.out_channels // groups, -1)
    per_location = weight.expand(n, h_out, w_out, *weight.shape).clone().requires_grad_(True)
    out = torch.einsum("nhwgok,ngkhw->ngohw", per_location, patches).reshape(n, conv.out_channels, h_out, w_out)
    if conv.bias is not None:
        out = out + conv.bias.view(1, -1, 1, 1)
    return out, per_location


def unfold_conv3d(conv: nn.Conv3d, x: Tensor, output_size: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """:func:`unfold_conv` for a Conv3d: explicit patches, one weight copy per (sample, output location)."""
    pad = tuple(conv._reversed_padding_repeated_twice)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = F.pad(x, pad, mode=mode) if any(pad) else x
    patches = explicit_patches(padded, conv.kernel_size, conv.stride, conv.dilation)  # (N, Cin, kt, kh, kw, t, h, w)
    assert tuple(patches.shape[-3:]) == tuple(output_size), (patches.shape, output_size)
    n, groups = x.shape[0], conv.groups
    patches = patches.reshape(n, groups, -1, *output_size)  # (N, G, Cin/G*K, t, h, w)
    weight = conv.weight.detach().reshape(groups, conv.out_channels // groups, -1)
    per_location = weight.expand(n, *output_size, *weight.shape).clone().requires_grad_(True)
    out = torch.einsum("nthwgok,ngkthw->ngothw", per_location, patches).reshape(n, conv.out_channels, *output_size)
    if conv.bias is not None:
        out = out + conv.bias.view(1, -1, 1, 1, 1)
    return out, per_location


def _out(size: int, total_pad: int, conv: nn.Conv2d, dim: int = 0) -> int:
    k, s, d = conv.kernel_size[dim], conv.stride[dim], conv.dilation[dim]
    return (size + total_pad - d * (k - 1) - 1) // s + 1


def _tf_same(size, conv: nn.Conv2d) -> tuple[int, int, int, int]:
    pads = []
    for i in range(2):
        k, s, d = conv.kernel_size[i], conv.stride[i], conv.dilation[i]
        total = max((-(-size[i] // s) - 1) * s + (k - 1) * d + 1 - size[i], 0)
        pads.append((total // 2, total - total // 2))
    return (pads[1][0], pads[1][1], pads[0][0], pads[0][1])


def _objective(output: Tensor, target) -> Tensor:
    if target is None:
        target = output.argmax(1)
    target = torch.as_tensor(target, device=output.device).long().expand(output.shape[0])
    return output.gather(1, target[:, None]).sum()


def to_nchw(t: Tensor) -> Tensor:
    if t.dim() == 5:
        return t.permute(0, 4, 1, 2, 3) if CHANNELS_LAST else t
    if t.dim() == 4:
        return t.permute(0, 3, 1, 2) if CHANNELS_LAST else t
    if t.dim() == 3:
        prefix = PREFIX_TOKENS
        side = math.isqrt(t.shape[1] - prefix)
        grid = GRID or (side, side)
        return t[:, prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)
    return t[:, :, None, None]


def from_nchw(t: Tensor, like: Tensor) -> Tensor:
    if like.dim() == 5:
        return t.permute(0, 2, 3, 4, 1) if CHANNELS_LAST else t
    if like.dim() == 4:
        return t.permute(0, 2, 3, 1) if CHANNELS_LAST else t
    if like.dim() == 3:  # the prefix tokens pass through the virtual layer unchanged
        return torch.cat([like[:, :PREFIX_TOKENS], t.flatten(2).transpose(1, 2)], dim=1)
    return t[:, :, 0, 0]


def brute_force_map(model: nn.Module, x: Tensor, layer: str, extract: str, aggregate: str, target=None) -> Tensor:
    """The map of one layer by explicit per-location weight gradients (autograd)."""
    model.eval()
    holder: dict = {}
    if layer == "input":
        virtual = VirtualLayer(extract, x)
        output = model(virtual(x))
        holder["virtual"] = virtual
    else:
        module = dict(model.named_modules())[layer]

        def hook(mod, inputs, out):
            if extract == "layer":
                if isinstance(mod, nn.Linear) and inputs[0].dim() == 5:  # channels-last volume (N, T, H, W, C)
                    a = inputs[0].permute(0, 4, 1, 2, 3)
                    wt = mod.weight.detach().expand(a.shape[0], *a.shape[2:], *mod.weight.shape).clone().requires_grad_(True)
                    y = torch.einsum("nthwoc,ncthw->nothw", wt, a)
                    if mod.bias is not None:
                        y = y + mod.bias.view(1, -1, 1, 1, 1)
                    new, holder["weight"] = y.permute(0, 2, 3, 4, 1), wt
                elif isinstance(mod, nn.Linear):
                    a = inputs[0].permute(0, 3, 1, 2) if inputs[0].dim() == 4 else to_nchw(inputs[0])  # Linear: channels last
                    wt = mod.weight.detach().expand(a.shape[0], *a.shape[2:], *mod.weight.shape).clone().requires_grad_(True)
                    y = torch.einsum("n...oc,nc...->no...", wt, a)
                    if mod.bias is not None:
                        y = y + mod.bias.view(1, -1, *([1] * (a.dim() - 2)))
                    new = from_nchw(y, out) if inputs[0].dim() != 4 else y.permute(0, 2, 3, 1)  # Linear: channels last
                    holder["weight"] = wt
                elif isinstance(mod, nn.Conv3d):
                    new, holder["weight"] = unfold_conv3d(mod, inputs[0], tuple(out.shape[-3:]))
                else:
                    new, holder["weight"] = unfold_conv(mod, inputs[0], tuple(out.shape[-2:]))
                torch.testing.assert_close(new, out, rtol=1e-4, atol=1e-4)
                return new
            virtual = VirtualLayer(extract, to_nchw(out))
            holder["virtual"] = virtual
            return from_nchw(virtual(to_nchw(out)), out)

        handle = module.register_forward_hook(hook)
        try:
            output = model(x)
        finally:
            handle.remove()
    weight = holder["weight"] if extract == "layer" else holder["virtual"].weight
    (grad_weight,) = torch.autograd.grad(_objective(output, target), [weight])
    grid_dims = 3 if x.dim() == 5 else 2
    if extract == "layer" and grad_weight.dim() == 4 + grid_dims:  # conv: (N, *grid, G, Cout/G, K) - keep groups separate
        grad_weight = grad_weight.flatten(1 + grid_dims)
    return aggregate_explicit(grad_weight, aggregate, grid_dims)


def assert_engine_matches_brute_force(model: nn.Module, x: Tensor, layer: str, extract: str, aggregate: str, target) -> Tensor:
    """The engine's map of ``layer`` (float64 input, float32 map) equals :func:`brute_force_map` to 1e-5; returns it."""
    import normgrad as ng

    maps = ng.saliency(model, x, target=target, layers=[layer], extract=extract, aggregate=aggregate)
    expected = brute_force_map(model, x, layer, extract, aggregate, target=target)
    assert maps[layer].shape == expected.shape
    torch.testing.assert_close(maps[layer], expected.float(), rtol=1e-5, atol=1e-6)
    return maps[layer]


def per_location_weight_grads(conv: nn.Conv2d | nn.Conv3d, x: Tensor, objective) -> Tensor:
    """Per-location weight gradients of a real conv, one location at a time.

    For each output location ``u``, only ``u`` sees a differentiable weight
    (all others use a detached copy), so ``∂J/∂W`` is the term of ``u`` alone.
    Returns (h, w, *weight.shape) (Conv3d: (t, h, w, ...)).  Slow; for small layers only.
    """
    out = conv(x)
    grid = tuple(out.shape[2:])
    weight = conv.weight.detach().clone().requires_grad_(True)
    terms = torch.zeros(*grid, *weight.shape, dtype=x.dtype)
    for location in itertools.product(*(range(side) for side in grid)):
        live = conv._conv_forward(x, weight, conv.bias)
        frozen = conv._conv_forward(x, weight.detach(), conv.bias)
        mask = torch.zeros_like(live)
        mask[(Ellipsis, *location)] = 1
        y = frozen + mask * (live - frozen)
        (grad,) = torch.autograd.grad(objective(y), [weight])
        terms[location] = grad
    return terms


def hook_norm_product(model: nn.Module, x: Tensor, score, module: nn.Module, grid: tuple[int, int]) -> Tensor:
    """NormGrad ``‖g_u‖·‖a_u‖`` at ``module``'s output, from a forward hook and ``torch.autograd.grad`` alone (eval mode).

    ``score(output, x) -> (N,)`` is the objective written out by the test.
    The hook hands the rest of the network a clone, so that later in-place
    operations cannot change the captured activation.  The layout is read
    from the map's ``grid`` (h, w) only: (N, C, h, w), (N, h, w, C), or
    tokens (N, T, C) whose last h·w are the grid (the first T − h·w are
    prefix tokens).
    """
    captured: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, output):
        tensor = output[0] if isinstance(output, tuple) else output
        captured.append(tensor)
        return (tensor.clone(), *output[1:]) if isinstance(output, tuple) else tensor.clone()

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            output = model(x.detach().clone().requires_grad_(True))
            (activation,) = captured
            (gradient,) = torch.autograd.grad(score(output, x).sum(), activation)
    finally:
        handle.remove()
    h, w = grid
    activation = activation.detach()
    if activation.dim() == 4 and tuple(activation.shape[2:]) == (h, w):
        product = activation.norm(dim=1) * gradient.norm(dim=1)
    elif activation.dim() == 4 and tuple(activation.shape[1:3]) == (h, w):
        product = activation.norm(dim=-1) * gradient.norm(dim=-1)
    else:
        prefix = activation.shape[1] - h * w
        product = (activation[:, prefix:].norm(dim=-1) * gradient[:, prefix:].norm(dim=-1)).reshape(-1, h, w)
    return product[:, None]
