"""Closed-form aggregates of per-location outer products ``p qᵀ``.

Every extract of the framework gives, at each location ``u`` and for each
group ``j`` of channels, a contribution that is an outer product
``p_u^(j) q_u^(j)ᵀ`` (``p`` from the gradient, ``q`` from the activation or
its receptive-field patch).  Its aggregates need only a few per-group
statistics of ``p`` and ``q`` — never the outer product itself:

=================  ============================================  ====================
aggregate          value of ``p qᵀ``                             statistics of a side
=================  ============================================  ====================
``norm``           ``‖p‖·‖q‖``                                   ``‖·‖²``
``positive_norm``  ``sqrt(‖p⁺‖²‖q⁺‖² + ‖p⁻‖²‖q⁻‖²)``             ``‖·⁺‖², ‖·⁻‖²``
``sum``            ``(Σp)(Σq)``                                  ``Σ·``
``max``            ``max(max p·max q, min p·min q,               ``max·, min·``
                   max p·min q, min p·max q)``
=================  ============================================  ====================

Groups combine as the aggregate of the concatenated blocks: squares add for
the norms, sums add, maxima take the max.

The norms never overflow or underflow where the true value is a finite
float: ``‖p‖²·‖q‖²`` overflows float32 once ``‖p‖·‖q‖ > 1.8e19`` and
vanishes below ``1e-19``, far inside its range (and a gradient of 1e-23,
a saturated softmax, squares to 0).  So each side's squares are those of
``v · 2^-e``, with ``e`` a per-sample power of two that brings ``max |v|``
near 1 when the plain squares leave a safe range (a rare second pass;
powers of two scale exactly), and the map is
``sqrt(Σ p'q') · 2^(e_p + e_q)``.  Norm statistics carry ``e`` as their
last entry, an (N, 1, 1, 1) integer tensor (0 when no scaling was needed).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from normgrad.errors import NormGradError

AGGREGATES: tuple[str, ...] = ("norm", "positive_norm", "sum", "max")
NORMS: tuple[str, ...] = ("norm", "positive_norm")
SAFE_SQUARES = 2.0**60  # squares within [2^-60, 2^60]: a product of two is a normal float32, summed over any number of groups
MAX_SHIFT = 126  # |e| ≤ 126: 2^±e is a normal float32 (torch.ldexp multiplies by 2^e)

Stats = tuple[Tensor, ...]


def check_aggregate(aggregate: str) -> str:
    """Return ``aggregate`` if it is known, else raise a clear error."""
    if aggregate not in AGGREGATES:
        raise NormGradError(f"unknown aggregate {aggregate!r}; valid aggregates: {', '.join(AGGREGATES)}")
    return aggregate


def working_dtype(tensor: Tensor) -> torch.dtype:
    """Statistics are computed in at least float32 (half precision overflows ``Σa²``)."""
    return torch.promote_types(tensor.dtype, torch.float32)


CHUNK_ELEMENTS = 1 << 20  # 4 MiB of float32: temporaries this small are reused by the allocator, larger ones fault in fresh pages


def by_chunks(fn: Callable[..., Tensor | Stats], *tensors: Tensor) -> Tensor | Stats:
    """``fn(*tensors)`` computed on slices of at most :data:`CHUNK_ELEMENTS` elements and concatenated.

    ``tensors`` are (N, ..., h, w) with equal N and h; ``fn`` reduces over
    other dimensions only, so its value at each sample and row is that of the
    whole call.  Slices are runs of samples, or of rows when one sample is
    larger: a per-location reduction of an activation-sized temporary (``v·v``,
    ``a ⊙ g``) then never allocates more than a slice (10× faster at batch 8
    of 96 × 112² than one 38 MB temporary).  On CPU only: CUDA's caching
    allocator reuses its blocks, where slices would only add kernel launches.
    """
    first = tensors[0]
    if first.device.type != "cpu" or first.numel() <= CHUNK_ELEMENTS or first.dim() < 3:
        return fn(*tensors)
    batch, rows = first.shape[0], first.shape[-2]
    per_sample = first.numel() // max(batch, 1)
    if per_sample <= CHUNK_ELEMENTS:
        step, dim = CHUNK_ELEMENTS // per_sample, 0
        pieces = [fn(*(t[i : i + step] for t in tensors)) for i in range(0, batch, step)]
    else:
        step, dim = max(1, CHUNK_ELEMENTS * rows // first.numel()), -2
        pieces = [fn(*(t[..., i : i + step, :] for t in tensors)) for i in range(0, rows, step)]
    if isinstance(pieces[0], Tensor):
        return torch.cat(pieces, dim)
    return tuple(torch.cat(parts, dim) for parts in zip(*pieces))


def channel_stats(values: Tensor, aggregate: str, groups: int) -> Stats:
    """Per-location, per-group statistics over channels.

    ``values`` is (N, C, h, w); returns tensors of shape (N, groups, h, w):
    ``norm`` → ``(Σ v²,)``, ``positive_norm`` → ``(Σ (v⁺)², Σ (v⁻)²)``,
    ``sum`` → ``(Σ v,)``, ``max`` → ``(max v, min v)``, in at least float32;
    the norms' squares are of ``v · 2^-e`` and ``e`` is appended (see the module's doc).
    """
    dtype = working_dtype(values)

    def stats(chunk: Tensor, *shift: Tensor) -> Stats:
        grouped = chunk.to(dtype)  # .to is free for float32
        if shift:
            grouped = torch.ldexp(grouped, -shift[0])  # a power of two: exact
        grouped = grouped.unflatten(1, (groups, -1))  # (N, G, C/G, h, w)
        if aggregate == "norm":
            return (_sum_of_squares(grouped),)
        if aggregate == "positive_norm":
            return (_sum_of_squares(grouped.clamp_min(0)), _sum_of_squares(grouped.clamp_max(0)))
        if aggregate == "sum":
            return (grouped.sum(2),)
        if aggregate == "max":
            return (grouped.amax(2), grouped.amin(2))
        raise AssertionError(aggregate)

    plain: Stats = by_chunks(stats, values)  # type: ignore[assignment]
    if aggregate not in NORMS:
        return plain
    exponent = torch.zeros((values.shape[0], *[1] * (values.dim() - 1)), dtype=torch.int32, device=values.device)
    if _squares_in_range(plain):
        return (*plain, exponent)
    exponent = sample_exponents(values)
    return (*by_chunks(stats, values, exponent.expand(-1, 1, *values.shape[2:])), exponent)  # type: ignore[misc]


def _squares_in_range(squares: Stats) -> bool:
    """Whether every sample's largest square is within the safe range (one small reduction; a host sync on GPU)."""
    peak = torch.stack([s.flatten(1).amax(1) if s.numel() else s.new_zeros(s.shape[0]) for s in squares]).amax(0)
    return bool(((peak <= SAFE_SQUARES) & (peak >= 1 / SAFE_SQUARES)).all())


def sample_exponents(values: Tensor) -> Tensor:
    """Per-sample ``e`` (N, 1, 1, 1) — (N, 1, 1, 1, 1) for clips — with ``max |v| · 2^-e`` in [0.5, 1)
    (clamped to ±126; 0 for a zero or non-finite sample)."""
    peak = torch.linalg.vector_norm(values.detach().flatten(1), ord=float("inf"), dim=1)
    exponent = torch.frexp(peak.to(working_dtype(values)))[1].clamp(-MAX_SHIFT, MAX_SHIFT)
    usable = (peak > 0) & torch.isfinite(peak)
    return torch.where(usable, exponent, 0).to(torch.int32).view(-1, *[1] * (values.dim() - 1))


def scale_back(values: Tensor, exponent: Tensor) -> Tensor:
    """``values · 2^exponent`` in two halves (each a normal float32): finite whenever the result is.

    On the CPU, where checking is free, exponents that are all zero (the
    usual case: no sample was rescaled) return ``values`` untouched."""
    if values.device.type == "cpu" and not bool(exponent.any()):
        return values
    half = torch.div(exponent, 2, rounding_mode="floor")
    return torch.ldexp(torch.ldexp(values, half), exponent - half)


def _sum_of_squares(grouped: Tensor) -> Tensor:
    # (v * v).sum() is several times faster on CPU than linalg.vector_norm over a strided dimension (channels first)
    if grouped.shape[2] == 1:
        return grouped[:, :, 0].square()
    return (grouped * grouped).sum(2)


def outer_aggregate(aggregate: str, p: Stats, q: Stats) -> Tensor:
    """Aggregate of ``p qᵀ`` from the two sides' statistics, groups combined.

    ``p`` and ``q`` are (N, G, h, w) statistics from :func:`channel_stats`
    (``q`` possibly pooled over patches); returns the (N, 1, h, w) map.
    """
    if aggregate in NORMS:
        squares = p[0] * q[0] if aggregate == "norm" else torch.addcmul(p[0] * q[0], p[1], q[1])
        return scale_back(_group_sum(squares).clamp_min_(0).sqrt_(), p[-1] + q[-1])
    if aggregate == "sum":
        return _group_sum(p[0] * q[0])
    if aggregate == "max":
        (p_max, p_min), (q_max, q_min) = p, q
        corners = torch.stack((p_max * q_max, p_min * q_min, p_max * q_min, p_min * q_max))
        return corners.amax(0).amax(1, keepdim=True)
    raise AssertionError(aggregate)


def _group_sum(values: Tensor) -> Tensor:
    """(N, G, h, w) → (N, 1, h, w): the groups' sum (one group: the values themselves, no copy)."""
    return values if values.shape[1] == 1 else values.sum(1, keepdim=True)


def product_aggregate(aggregate: str, values: Tensor, scale: Tensor | None = None) -> Tensor:
    """Aggregate over channels of ``values ⊙ scale`` (N, C, h, w) → (N, 1, h, w), by chunks, in ``scale``'s dtype (at least float32).

    ``norm``: ``sqrt(Σ v²)``; ``positive_norm``: ``sqrt(Σ (v⁺)²)``; ``sum``: ``Σ v``; ``max``: ``max v``.
    The norms' squares leave float32's range far inside it: then they are
    recomputed from ``v · 2^-e`` (per-sample ``e``) and scaled back.
    """

    def reduce(chunk: Tensor, *scales: Tensor) -> Tensor:
        if scales:
            chunk = chunk.to(scales[0].dtype) * scales[0]  # a fresh temporary: modified in place below
        return _reduce(chunk, fresh=bool(scales))

    def _reduce(chunk: Tensor, fresh: bool) -> Tensor:
        if aggregate == "norm":
            return (chunk * chunk).sum(1, keepdim=True)
        if aggregate == "positive_norm":
            positive = chunk.clamp_min_(0) if fresh else chunk.clamp_min(0)
            return (positive * positive).sum(1, keepdim=True)
        if aggregate == "sum":
            return chunk.sum(1, keepdim=True)
        if aggregate == "max":
            return chunk.amax(1, keepdim=True)
        raise AssertionError(aggregate)

    reduced = by_chunks(reduce, values, *([] if scale is None else [scale]))
    assert isinstance(reduced, Tensor)
    if aggregate not in NORMS:
        return reduced
    if _squares_in_range((reduced,)):
        return reduced.sqrt_()
    product = values.to(working_dtype(values)) if scale is None else values.to(scale.dtype) * scale  # rare: one whole temporary
    exponent = sample_exponents(product)
    return scale_back(_reduce(torch.ldexp(product, -exponent), fresh=True).sqrt_(), exponent)
