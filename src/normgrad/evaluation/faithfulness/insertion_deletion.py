"""Insertion and deletion (Petsiuk et al., RISE, BMVC 2018): the class probability as pixels go, or come, in map order.

RISE's protocol.  Pixels are ranked by the map (highest first; ties in a
seeded random order, the same for every method).  With ``n = ⌈H·W / step⌉``:

* ``deletion``: start from the image; at iteration ``i = 1 … n`` the next
  ``step`` pixels (all channels) take the *substrate*'s values;
* ``insertion``: start from the substrate; at each iteration the next
  ``step`` pixels take the image's values.

The softmax probability of the target class is read before the first and
after every iteration: a curve of ``n + 1`` points, summarised by its
normalised area ``AUC = (Σ_k p_k − p_0/2 − p_n/2) / n`` (the trapezoid rule
on [0, 1]).  Deletion: lower is better; insertion: higher.

Substrates (:data:`SUBSTRATES`):

``rise``
    RISE's own: deletion to zero *in model space* (the model's input
    tensor, as RISE's code does: the dataset's mean colour for a
    mean-normalised model); insertion from a blurred copy — RISE's kernel,
    a 11 × 11 delta smoothed by ``scipy.ndimage.gaussian_filter`` with
    σ = 5 (reflect mode, so the tails fold back into the window; sums to
    1), applied per channel to the model-space tensor with zero padding 5.
``road``
    ROAD's noisy linear imputation on un-normalised pixels: at each point,
    the pixels not (yet) present are imputed from those present (deletion:
    the deleted ones; insertion: the not yet inserted ones).  With no pixel
    present (deletion's last point, insertion's first) every pixel takes the
    image's mean colour (:func:`~normgrad.evaluation.faithfulness.imputation.linear_imputation`), plus noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normgrad.engine.model_state import eval_mode
from normgrad.errors import NormGradError
from normgrad.evaluation.faithfulness.imputation import NOISE, impute_seeded
from normgrad.evaluation.faithfulness.pixels import IDENTITY, PixelSpace, check_batch, class_probability, first_pixels, ranking

MODES = ("deletion", "insertion")
SUBSTRATES = ("rise", "road")
KERNEL_SIZE, KERNEL_SIGMA = 11, 5.0


@dataclass(frozen=True)
class CausalCurves:
    """Per image: the target's probability after each iteration, (N, n + 1), for one mode and substrate."""

    mode: str
    substrate: str
    step: int
    scores: Tensor

    @property
    def auc(self) -> Tensor:
        """Normalised trapezoid area per image (N,)."""
        return auc(self.scores)


def auc(scores: Tensor) -> Tensor:
    """``(Σ p − p_0/2 − p_n/2) / n`` along the last axis."""
    n = scores.shape[-1] - 1
    if n < 1:
        raise NormGradError("a curve needs at least two points")
    return (scores.sum(-1) - scores[..., 0] / 2 - scores[..., -1] / 2) / n


@lru_cache(maxsize=4)
def rise_kernel(size: int = KERNEL_SIZE, sigma: float = KERNEL_SIGMA) -> Tensor:
    """RISE's blur kernel (size, size): a centred delta smoothed by ``gaussian_filter(σ)`` (reflect mode)."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1
    return torch.from_numpy(gaussian_filter(delta, sigma))


def rise_blur(inputs: Tensor) -> Tensor:
    """Each channel convolved with :func:`rise_kernel`, zero padding (the input's size kept)."""
    kernel = rise_kernel().to(inputs)
    channels = inputs.shape[1]
    weight = kernel.expand(channels, 1, *kernel.shape).contiguous()
    return F.conv2d(inputs, weight, padding=KERNEL_SIZE // 2, groups=channels)


def causal_metric(
    model: nn.Module,
    inputs: Tensor,
    maps: Tensor,
    targets: Tensor,
    *,
    mode: str,
    step: int,
    substrate: str = "rise",
    space: PixelSpace = IDENTITY,
    noise: float = NOISE,
    seed: int = 0,
    first_index: int = 0,
    batch_size: int = 64,
) -> CausalCurves:
    """The insertion or deletion curves of ``maps`` (N, 1, H, W) for ``inputs`` (N, C, H, W, model space)."""
    check_batch(inputs, maps, targets)
    if mode not in MODES:
        raise NormGradError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if substrate not in SUBSTRATES:
        raise NormGradError(f"unknown substrate {substrate!r}; valid: {', '.join(SUBSTRATES)}")
    height, width = inputs.shape[-2:]
    if isinstance(step, bool) or int(step) != step or not 1 <= step <= height * width:
        raise NormGradError(f"step must be a whole number of pixels in 1..{height * width}; got {step}")
    iterations = math.ceil(height * width / step)
    order = ranking(maps, seed)
    x = inputs.detach()
    scores = torch.empty(len(x), iterations + 1, dtype=torch.float64)
    with eval_mode(model):
        if substrate == "rise":
            image, other = (x, torch.zeros_like(x)) if mode == "deletion" else (rise_blur(x), x)
            current = image.clone()
            flat_current, flat_other = current.flatten(2), other.flatten(2)
            for k in range(iterations + 1):
                scores[:, k] = class_probability(model, current, targets, batch_size)
                if k < iterations:
                    chosen = order[:, k * step : (k + 1) * step].to(x.device)[:, None].expand(-1, x.shape[1], -1)
                    flat_current.scatter_(2, chosen, flat_other.gather(2, chosen))
        else:
            pixels = space.to_pixels(x.cpu().double())
            for k in range(iterations + 1):
                ranked_first = first_pixels(order, min(k * step, height * width), (height, width))  # deleted so far, or inserted
                removed = ranked_first if mode == "deletion" else ~ranked_first
                imputed = impute_seeded(pixels, removed, [[seed, first_index + i, k, 7] for i in range(len(x))], noise)
                scores[:, k] = class_probability(model, space.to_inputs(imputed).to(x), targets, batch_size)
    return CausalCurves(mode, substrate, int(step), scores)
