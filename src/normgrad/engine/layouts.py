"""Deciding an activation's layout from evidence, never from the size of its last dimension.

The evidence, strongest first:

1. **The batch**: the first dimension must be the batch.  Window-partitioned
   (Swin, MaxViT), head-split or patch-unfolded (MobileViT) tensors fold
   windows into it (batch 64 for one image); their positions are not on the
   image grid, so they have no map (the error names a module that has one).
2. **The module type** says which dimension holds the channels:
   ``Conv*d``, ``BatchNorm*d``, ``GroupNorm``, ``InstanceNorm*d``, pools,
   ``Upsample``, ``PixelShuffle`` act on dimension 1 (channels first);
   ``nn.Linear`` acts on the last dimension, and so does a ``LayerNorm`` /
   ``RMSNorm`` (``normalized_shape`` = the last dimension), except the
   ``*2d`` norms of timm and torchvision that act on dimension 1; a plain
   ``Sequential`` has its last non-element-wise child's layout.  When the
   type is silent (a custom block), the operation that computed the tensor
   does (:func:`graph_axis`): a convolution, BatchNorm or pooling behind
   element-wise operations and sums means channels first.
3. **The input's grid**: the positions must lie on a grid of the H × W
   input (for a torchvision detector, which resizes and pads its input
   inside the model, the H × W of that padded input): ``h = ⌊H/s⌋`` or ``⌈H/s⌉`` and ``w`` likewise for one integer
   stride ``s`` (a few positions less for unpadded convolutions; any size up
   to the input's for a convolution's own output).  Tokens ``(N, T, C)``
   must be ``k`` prefix tokens plus exactly such a grid, with ``k`` the
   number the model declares (timm's ``num_prefix_tokens``, or its
   ``cls_token`` / ``class_token`` / ``dist_token`` / ``reg_token``
   parameters, a numbered family of one of them counted once — CoaT's
   ``cls_token1`` … ``cls_token4``, one per stage; Hugging Face DeiT's
   ``distillation_token``) or 0 — non-square inputs included — laid in raster order, as
   patch embeddings produce them (a family that reorders them, timm's
   Hiera, has no token maps).  A 3-D activation is read as tokens unless its
   module type is channels-first (``Conv1d``...) or a ``Flatten`` of a map:
   then as a flattened map ``(N, C, h·w)``.
4. **The model family's documented layout** breaks a tie when both readings
   of a 4-D tensor fit the grid equally well and nothing above settles it:
   channels last for timm's ``output_fmt="NHWC"`` models (Swin, MambaOut),
   torchvision's Swin and token models (ViT, DeiT, EVA, CaiT...); channels
   first for the other torchvision, timm and Hugging Face models and for
   models built of ``torch.nn`` modules alone (none of which moves the
   channels).  An exact
   grid beats one that fits only within the slack of unpadded convolutions.

When the evidence does not settle the layout (a tie in a model of no known
family, a grid the input does not have, a 1-D model's ``(N, C, L)``),
:class:`LayoutError` says why and what to select instead: there is no map.

**Videos and volumes** (inputs (N, C, T, H, W)): maps are 5-D, (N, C, t, h, w)
or channels last (N, t, h, w, C), with ``h × w`` a grid of the frame as
above and ``t`` a grid of the ``T`` frames at its own stride (video models
stride time and space differently: R(2+1)D's stem keeps every frame, MViT's
patches pair them).  Tokens are ``k + t·h·w`` in raster order; when two
``t × h × w`` grids explain the count (``1×8×8`` and ``4×4×4`` for 64 tokens
of a 4×32×32 clip), the sizes a module returns beside its tokens (MViT's
blocks return ``(tokens, [t, h, w])``) settle it, else there is no map.  A
4-D activation of a video model has no time axis and no map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from normgrad.errors import NormGradError
from normgrad.formulas.layout import Layout

TOKEN_PARAMETERS = ("cls_token", "class_token", "dist_token", "distillation_token", "reg_token", "register_tokens")
_TOKEN_NAMES = frozenset(TOKEN_PARAMETERS)
UNROLLED_TOKENS = ("Unroll",)  # timm's Hiera: tokens reordered so that pooling is a strided slice, not raster order

_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.Dropout2d,
    nn.LocalResponseNorm,
)


class LayoutError(NormGradError):
    """A layer whose activation is not on the image grid (or whose layout the evidence does not settle)."""

    def __init__(self, message: str, reason: str = "not on the image grid") -> None:
        super().__init__(message)
        self.reason = reason  # in a few words, for layer listings


@dataclass(frozen=True)
class Evidence:
    """What the model and its input tell about every activation: the image grid, the batch, the family's layouts."""

    image: tuple[int, int]
    batch: int
    prefix_tokens: int = 0
    family: str | None = None  # the layout the model family documents: "first", "last" or None (unknown)
    raster_tokens: bool = True  # False when the family reorders its tokens (timm's Hiera "unrolls" them)
    frames: int | None = None  # T of a video or volume input (N, C, T, H, W); None for images

    @property
    def grid(self) -> tuple[int, ...]:
        """The input's grid: (H, W) for images, (T, H, W) for videos and volumes."""
        return self.image if self.frames is None else (self.frames, *self.image)

    @classmethod
    def of(cls, model: nn.Module, inputs: torch.Tensor) -> Evidence:
        """The evidence for ``model`` on ``inputs`` (N, C, H, W) or (N, C, T, H, W): declared prefix tokens, channels-last families."""
        declared: int | None = None
        channels_last = known_family = False
        all_torch = raster_tokens = True
        token_counts: list[int] = []
        for module in model.modules():
            attributes = vars(module)  # plain lookups: nn.Module.__getattr__ raises for missing names, which is slow
            if declared is None:
                count = attributes.get("num_prefix_tokens")
                declared = count if isinstance(count, int) else None
            fmt = attributes.get("output_fmt")
            torchvision_swin, known, from_torch, unrolled = _type_facts(type(module))
            channels_last = channels_last or torchvision_swin or (fmt is not None and str(getattr(fmt, "value", fmt)) == "NHWC")
            parameters = attributes.get("_parameters")
            if parameters:
                token_counts += _prefix_counts(parameters)
            known_family = known_family or known
            all_torch = all_torch and from_torch
            raster_tokens = raster_tokens and not unrolled
        prefix = declared if declared is not None else sum(token_counts)
        if channels_last or declared is not None or token_counts:
            family: str | None = "last"
        elif known_family or all_torch:  # torchvision and timm CNNs; torch.nn alone has no module that moves the channels last
            family = "first"
        else:
            family = None
        height, width = _detector_input(model, inputs) or inputs.shape[-2:]
        frames = int(inputs.shape[2]) if inputs.dim() == 5 else None
        return cls((int(height), int(width)), int(inputs.shape[0]), prefix, family, raster_tokens, frames)


def _detector_input(model: nn.Module, inputs: torch.Tensor) -> tuple[int, int] | None:
    """A torchvision detector resizes and pads its input inside the model (``GeneralizedRCNNTransform``): its layers lie
    on the grid of that padded input, whose size its transform gives (run on one image, no gradient)."""
    transform = vars(model).get("_modules", {}).get("transform")
    if type(transform).__name__ != "GeneralizedRCNNTransform" or inputs.dim() != 4:
        return None
    from normgrad.engine.model_state import eval_mode

    with torch.no_grad(), eval_mode(transform):
        resized, _ = transform([inputs[0].detach()])
    return int(resized.tensors.shape[-2]), int(resized.tensors.shape[-1])


@lru_cache(maxsize=1024)
def _type_facts(kind: type) -> tuple[bool, bool, bool, bool]:
    """What a module's class tells: (torchvision's Swin, a torchvision/timm model, a ``torch.nn`` module, reorders tokens)."""
    source = kind.__module__
    torchvision_swin = kind.__name__ == "SwinTransformer" and source.startswith("torchvision")
    known_family = source.startswith(("torchvision.models.", "timm.models.", "transformers.models."))
    return torchvision_swin, known_family, source.startswith("torch.nn."), kind.__name__ in UNROLLED_TOKENS


def activation_of(output: object) -> torch.Tensor | None:
    """The activation a module outputs: a tensor, or the tensor of a ``(tensor, metadata...)`` tuple (MViTv2's ``(x, size)``).

    Tuples holding several tensors are ambiguous: ``None``.
    """
    if isinstance(output, torch.Tensor):
        return output
    single = isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor)
    if single and not any(isinstance(item, torch.Tensor) for item in output[1:]):  # type: ignore[index]
        return output[0]  # type: ignore[index]
    return None


def sizes_of(output: object) -> tuple[int, ...] | None:
    """The grid sizes a module returns beside its tokens, as MViT's blocks do: ``(tokens, [t, h, w])``; else ``None``."""
    if isinstance(output, (tuple, list)) and len(output) == 2 and isinstance(output[0], torch.Tensor):
        sizes = output[1]
        if isinstance(sizes, (tuple, list)) and len(sizes) in (2, 3) and all(isinstance(s, int) and s > 0 for s in sizes):
            return tuple(sizes)
    return None


def _prefix_counts(parameters: dict[str, torch.Tensor | None]) -> list[int]:
    """The prefix tokens a module's parameters declare: each named token parameter, and a numbered family of them
    (CoaT's ``cls_token1`` … ``cls_token4``, one per stage, each prepended to its own stage's tokens) once."""
    counts = [_token_count(parameters[name]) for name in TOKEN_PARAMETERS if parameters.get(name) is not None]
    numbered: dict[str, int] = {}
    for name, parameter in parameters.items():
        base = name.rstrip("0123456789").rstrip("_")
        if parameter is not None and base != name and base in _TOKEN_NAMES:
            numbered[base] = max(numbered.get(base, 0), _token_count(parameter))
    return counts + list(numbered.values())


def _token_count(parameter: torch.Tensor) -> int:
    return int(parameter.shape[-2]) if parameter.dim() >= 3 else 1


def channel_axis(module: nn.Module | None, shape: Sequence[int]) -> str | None:
    """``"first"`` or ``"last"`` when the module type says where the channels are; ``None`` when it is silent.

    A plain ``nn.Sequential`` (or a subclass keeping its ``forward``) outputs
    its last child's output: its evidence is that child's, looking past
    element-wise children (activations, dropout, identity).
    """
    if module is None:
        return "first"  # the input image
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        for child in reversed(list(module.children())):
            axis = channel_axis(child, shape)
            if axis is not None or not _elementwise(child):
                return axis
        return None
    if isinstance(module, nn.Linear):
        return "last" if shape[-1] == module.out_features else None
    if isinstance(module, _CHANNELS_FIRST) or "batchnorm" in type(module).__name__.lower():
        return "first"
    normalized = getattr(module, "normalized_shape", None)
    if isinstance(normalized, (tuple, list, torch.Size)) and len(normalized) == 1:
        channels = int(normalized[0])
        if "2d" in type(module).__name__.lower():  # LayerNorm2d / RmsNorm2d: channels first
            return "first" if len(shape) > 2 and shape[1] == channels else None
        return "last" if shape[-1] == channels else None
    return None


_FIRST_OPS = ("Convolution", "CudnnConvolution", "MkldnnConvolution", "SlowConv", "BatchNorm", "NativeGroupNorm", "MaxPool", "AvgPool")
_FIRST_OPS += ("AdaptiveAvgPool", "AdaptiveMaxPool", "Upsample", "PixelShuffle", "PixelUnshuffle")
_ELEMENTWISE_OPS = ("Relu", "Hardtanh", "Gelu", "Silu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Hardswish", "Hardsigmoid", "Mish")
_ELEMENTWISE_OPS += ("Softplus", "Threshold", "Clone", "NativeDropout", "Add", "Sub", "Mul", "Div", "Neg")


def graph_axis(tensor: torch.Tensor, depth: int = 8) -> str | None:
    """Where the channels are, from the operation that computed ``tensor`` (its autograd node).

    Element-wise operations and sums keep their first operand's layout, so
    the walk goes back through them to a convolution, BatchNorm or pooling
    (channels first) or a ``layer_norm`` over the last dimension (channels
    last); anything else (a view, a permutation, a matrix product) is
    silent.
    """
    node = tensor.grad_fn
    for _ in range(depth):
        if node is None:
            return None
        name = node.name().rstrip("0123456789").removesuffix("Backward")
        if name.startswith(_FIRST_OPS):
            return "first"
        if name == "NativeLayerNorm":
            normalized = tuple(getattr(node, "_saved_normalized_shape", ()))
            return "last" if len(normalized) == 1 and normalized[0] == tensor.shape[-1] else None
        if name not in _ELEMENTWISE_OPS:
            return None
        node = next((next_node for next_node, _ in node.next_functions if next_node is not None), None)
    return None


def _elementwise(module: nn.Module) -> bool:
    """A module that keeps its input's layout: an activation, dropout or identity (torch, timm, torchvision)."""
    kind = type(module)
    return kind.__module__ in ("torch.nn.modules.activation", "torch.nn.modules.dropout", "timm.layers.activations") or kind.__name__ in (
        "Identity",
        "DropPath",
        "StochasticDepth",
    )


@lru_cache(maxsize=4096)
def grid_fit(height: int, width: int, image_height: int, image_width: int, lenient: bool = False) -> bool:
    """Is ``height × width`` the grid of an ``image_height × image_width`` input at one integer stride ``s``?

    Each side must be ``⌊side/s⌋`` or ``⌈side/s⌉`` for the same ``s``;
    ``lenient`` also accepts the few positions unpadded convolutions lose
    (up to 1/16 of the side, at least 1: Inception v3's 71 for 299/4).
    """
    for stride in range(1, max(image_height, image_width) + 1):
        if _side_fits(height, image_height, stride, lenient) and _side_fits(width, image_width, stride, lenient):
            return True
    return False


def _side_fits(size: int, image_size: int, stride: int, lenient: bool) -> bool:
    low, high = image_size // stride, -(-image_size // stride)
    if lenient:
        low -= max(1, low // 16)
    return size >= 1 and low <= size <= high


def time_fit(frames: int, input_frames: int, convolution: bool = False) -> int:
    """How well ``frames`` steps are a grid of ``input_frames``: 2 at one stride, 1 for a convolution output or within slack, else 0."""
    if any(_side_fits(frames, input_frames, stride, False) for stride in range(1, input_frames + 1)):
        return 2
    if convolution:
        return int(1 <= frames <= input_frames + 2)
    return int(any(_side_fits(frames, input_frames, stride, True) for stride in range(1, input_frames + 1)))


@lru_cache(maxsize=4096)
def volume_token_grid(count: int, frames: int, image_height: int, image_width: int) -> tuple[int, int, int] | None:
    """The t × h × w grid with ``t·h·w = count`` of a ``frames × H × W`` input (time at its own stride); ``None`` if none or several."""
    grids = []
    for steps in range(1, min(count, frames) + 1):
        if count % steps == 0 and time_fit(steps, frames) == 2:
            grid = token_grid(count // steps, image_height, image_width)
            if grid is not None:
                grids.append((steps, *grid))
    return grids[0] if len(grids) == 1 else None


@lru_cache(maxsize=4096)
def token_grid(count: int, image_height: int, image_width: int) -> tuple[int, int] | None:
    """The h × w grid with ``h·w = count`` that the input has at some stride (exactly: tokens come from patches).

    When several do (6 = 2×3 = 3×2 on a 128×160 input), the one whose aspect
    is nearest the input's; ``None`` when none does, or two are equally near.
    """
    grids = [(h, count // h) for h in range(1, count + 1) if count % h == 0 and grid_fit(h, count // h, image_height, image_width)]
    if len(grids) > 1:
        aspect = math.log(image_height / image_width)
        distance = {grid: abs(math.log(grid[0] / grid[1]) - aspect) for grid in grids}
        grids.sort(key=distance.__getitem__)
        if math.isclose(distance[grids[0]], distance[grids[1]]):
            return None
    return grids[0] if grids else None


def decide_layout(
    output: torch.Tensor | Sequence[int], module: nn.Module | None, evidence: Evidence, where: str, sizes: Sequence[int] | None = None
) -> Layout:
    """The layout of ``output`` (a tensor, or just its shape) of ``module``, or a :class:`LayoutError` saying why there is none.

    ``sizes``: the grid sizes the module returned beside its tokens (:func:`sizes_of`), if any.
    """
    tensor = output if isinstance(output, torch.Tensor) else None
    shape = tuple(int(s) for s in (output.shape if tensor is not None else output))
    volume = evidence.frames is not None
    if len(shape) not in (2, 3, 5 if volume else 4):
        if volume:
            raise LayoutError(
                f"{where} outputs a {len(shape)}-D tensor {shape} for a video or volume input (N, C, T, H, W); supported: 2-D vectors, "
                "3-D tokens and 5-D maps (N, C, t, h, w) or (N, t, h, w, C); a 4-D activation has no time axis, so it has no map",
                f"{len(shape)}-D",
            )
        raise LayoutError(
            f"{where} outputs a {len(shape)}-D tensor {shape}; supported: 2-D vectors, 3-D tokens and 4-D maps", f"{len(shape)}-D"
        )
    if shape[0] != evidence.batch:
        raise LayoutError(
            f"{where} outputs shape {shape} for a batch of {evidence.batch}: its first dimension folds windows, heads or patches "
            f"into the batch ({shape[0]} per batch), so its positions are not on the image grid and it has no map",
            reason="batch folds windows or heads",
        )
    if len(shape) == 2:
        return Layout("vector", (1, 1, 1)) if volume else Layout("vector")
    if len(shape) == 3 and not evidence.raster_tokens:
        raise LayoutError(
            f"{where} outputs tokens {shape} of a model that reorders its tokens (timm's Hiera unrolls them), so their order "
            "on the image grid is not raster order and they have no map; select a convolution before the tokens",
            "tokens out of raster order",
        )
    axis = channel_axis(module, shape)
    kind = type(module).__name__ if module is not None else "input"
    if axis is None and tensor is not None:
        axis = graph_axis(tensor)
        kind = f"{kind} (computed by {tensor.grad_fn.name()})" if axis is not None and tensor.grad_fn is not None else kind
    (first, first_fit), (last, last_fit) = _candidates(shape, evidence, convolution=axis == "first", sizes=sizes)
    if axis is not None:
        chosen = first if axis == "first" else last
        if not (first_fit if axis == "first" else last_fit):
            raise LayoutError(_off_grid_message(where, shape, evidence, f"a {kind} has its channels {axis}"))
        return chosen
    if len(shape) == 3:  # without a channels-first module type (Conv1d, BatchNorm1d...), 3-D activations are tokens
        if isinstance(module, nn.Flatten) and module.start_dim in (2, -2) and first_fit:
            return first
        if not last_fit:
            raise LayoutError(_off_grid_message(where, shape, evidence, "read as tokens"))
        return last
    if first_fit != last_fit:  # an exact grid beats one that fits only within the slack of unpadded convolutions
        return first if first_fit > last_fit else last
    if not first_fit:
        raise LayoutError(_off_grid_message(where, shape, evidence, "neither channels first nor channels last"))
    if evidence.family is not None:
        return first if evidence.family == "first" else last
    raise LayoutError(
        f"{where} outputs {shape}, which fits the {_input_text(evidence)} input both as {first} and as {last}, "
        f"and a {kind} does not tell which; select a module whose type settles it (a convolution or BatchNorm: channels first; "
        "a Linear or LayerNorm: channels last)",
        "layout ambiguous",
    )


def _candidates(
    shape: tuple[int, ...], evidence: Evidence, convolution: bool, sizes: Sequence[int] | None = None
) -> tuple[tuple[Layout, int], tuple[Layout, int]]:
    """The channels-first and channels-last readings of ``shape``, each with how well it fits the input's grid.

    Fit: 2 exact (one stride, floor or ceil), 1 within the slack of unpadded
    convolutions, 0 not a grid.  The output of a channels-first module (a
    convolution, pooling, BatchNorm) may have any kernel, padding and stride
    per side (a (3, 5) kernel, a (2, 1) stride, an Inception stem at a small
    input), as long as it is not larger than the input; channels-last
    modules (Linear, LayerNorm) do not change the grid, so theirs must fit
    (torchvision's MaxViT keeps its 49-position windows in (N, 64, 49, C)).
    """
    image_height, image_width = evidence.image
    if evidence.frames is not None:
        return _volume_candidates(shape, evidence, convolution, sizes)
    if len(shape) == 4:

        def fit(height: int, width: int, channels_first: bool) -> int:
            if grid_fit(height, width, image_height, image_width):
                return 2
            if convolution and channels_first:
                return int(height <= image_height + 2 and width <= image_width + 2)
            return int(grid_fit(height, width, image_height, image_width, True))

        return (Layout("nchw", shape[2:4]), fit(*shape[2:4], True)), (Layout("nhwc", shape[1:3]), fit(*shape[1:3], False))
    flat_grid = token_grid(shape[2], image_height, image_width)
    first = (Layout("flat", flat_grid), 2) if flat_grid else (Layout("flat"), 0)
    last = (Layout("tokens"), 0)
    for prefix in dict.fromkeys((evidence.prefix_tokens, 0)):
        grid = token_grid(shape[1] - prefix, image_height, image_width) if shape[1] > prefix else None
        if grid:
            last = (Layout("tokens", grid, prefix), 2)
            break
    return first, last


def _volume_candidates(
    shape: tuple[int, ...], evidence: Evidence, convolution: bool, sizes: Sequence[int] | None
) -> tuple[tuple[Layout, int], tuple[Layout, int]]:
    """:func:`_candidates` for a video or volume input: 5-D maps, or tokens on a t × h × w grid."""
    frames, (image_height, image_width) = evidence.frames, evidence.image
    assert frames is not None
    if len(shape) == 5:

        def fit(steps: int, height: int, width: int, channels_first: bool) -> int:
            spatial = 2 if grid_fit(height, width, image_height, image_width) else 0
            if not spatial and convolution and channels_first:
                spatial = int(height <= image_height + 2 and width <= image_width + 2)
            elif not spatial:
                spatial = int(grid_fit(height, width, image_height, image_width, True))
            return min(spatial, time_fit(steps, frames, convolution and channels_first))

        return (Layout("nchw", shape[2:5]), fit(*shape[2:5], True)), (Layout("nhwc", shape[1:4]), fit(*shape[1:4], False))

    def grid_of(count: int) -> tuple[int, int, int] | None:
        if sizes is not None and len(sizes) == 3 and math.prod(sizes) == count:
            steps, height, width = sizes
            if time_fit(steps, frames) and grid_fit(height, width, image_height, image_width, True):
                return (steps, height, width)
        return volume_token_grid(count, frames, image_height, image_width)

    flat_grid = grid_of(shape[2])
    first = (Layout("flat", flat_grid), 2) if flat_grid else (Layout("flat", (1, 1, 1)), 0)
    last = (Layout("tokens", (1, 1, 1)), 0)
    for prefix in dict.fromkeys((evidence.prefix_tokens, 0)):
        grid = grid_of(shape[1] - prefix) if shape[1] > prefix else None
        if grid:
            last = (Layout("tokens", grid, prefix), 2)
            break
    return first, last


def _input_text(evidence: Evidence) -> str:
    return "×".join(str(side) for side in evidence.grid)


def _off_grid_message(where: str, shape: tuple[int, ...], evidence: Evidence, reading: str) -> str:
    grid = f"a grid of the {_input_text(evidence)} input"
    if len(shape) == 3 and reading.endswith("channels first"):
        what = f"its last dimension {shape[2]} is not {grid} (a sequence (N, C, L) of a 1-D model has no image map)"
    elif len(shape) == 3:
        prefix = f" after the model's {evidence.prefix_tokens} prefix token(s)" if evidence.prefix_tokens else ""
        what = (
            f"its {shape[1]} tokens{prefix} are not {grid} at any patch size (if the model prepends tokens, "
            "declare their number as model.num_prefix_tokens, timm's convention)"
        )
        if evidence.frames is not None:
            what += ", or two t×h×w grids explain their count equally (select a module that returns its sizes, as MViT's blocks do)"
    else:
        what = f"its spatial dimensions are not {grid} at any stride"
    return f"{where} outputs {shape} ({reading}): {what}, so it has no map; select a layer on the image grid"


__all__ = [
    "Evidence",
    "LayoutError",
    "activation_of",
    "channel_axis",
    "decide_layout",
    "graph_axis",
    "grid_fit",
    "sizes_of",
    "time_fit",
    "token_grid",
    "volume_token_grid",
]
