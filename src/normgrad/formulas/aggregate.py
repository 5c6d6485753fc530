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
"""

from __future__ import annotations

import torch
from torch import Tensor

from normgrad.errors import NormGradError

AGGREGATES: tuple[str, ...] = ("norm", "positive_norm", "sum", "max")

Stats = tuple[Tensor, ...]


def check_aggregate(aggregate: str) -> str:
    """Return ``aggregate`` if it is known, else raise a clear error."""
    if aggregate not in AGGREGATES:
        raise NormGradError(f"unknown aggregate {aggregate!r}; valid aggregates: {', '.join(AGGREGATES)}")
    return aggregate


def working_dtype(tensor: Tensor) -> torch.dtype:
    """Statistics are computed in at least float32 (half precision overflows ``Σa²``)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def channel_stats(values: Tensor, aggregate: str, groups: int) -> Stats:
    """Per-location, per-group statistics over channels.

    ``values`` is (N, C, h, w); returns tensors of shape (N, groups, h, w):
    ``norm`` → ``(Σ v²,)``, ``positive_norm`` → ``(Σ (v⁺)², Σ (v⁻)²)``,
    ``sum`` → ``(Σ v,)``, ``max`` → ``(max v, min v)``.
    """
    values = values.to(working_dtype(values))
    grouped = values.unflatten(1, (groups, -1))  # (N, G, C/G, h, w)
    if aggregate == "norm":
        return (_sum_of_squares(grouped),)
    if aggregate == "positive_norm":
        return (_sum_of_squares(grouped.clamp_min(0)), _sum_of_squares(grouped.clamp_max(0)))
    if aggregate == "sum":
        return (grouped.sum(2),)
    if aggregate == "max":
        return (grouped.amax(2), grouped.amin(2))
    raise AssertionError(aggregate)


def _sum_of_squares(grouped: Tensor) -> Tensor:
    # (v * v).sum() is several times faster on CPU than linalg.vector_norm over a strided dimension
    if grouped.shape[2] == 1:
        return grouped[:, :, 0].square()
    return (grouped * grouped).sum(2)


def outer_aggregate(aggregate: str, p: Stats, q: Stats) -> Tensor:
    """Aggregate of ``p qᵀ`` from the two sides' statistics, groups combined.

    ``p`` and ``q`` are (N, G, h, w) statistics from :func:`channel_stats`
    (``q`` possibly pooled over patches); returns the (N, 1, h, w) map.
    """
    if aggregate == "norm":
        (p_sq,), (q_sq,) = p, q
        return (p_sq * q_sq).sum(1, keepdim=True).clamp_min(0).sqrt()
    if aggregate == "positive_norm":
        (p_pos, p_neg), (q_pos, q_neg) = p, q
        return (p_pos * q_pos + p_neg * q_neg).sum(1, keepdim=True).clamp_min(0).sqrt()
    if aggregate == "sum":
        (p_sum,), (q_sum,) = p, q
        return (p_sum * q_sum).sum(1, keepdim=True)
    if aggregate == "max":
        (p_max, p_min), (q_max, q_min) = p, q
        corners = torch.stack((p_max * q_max, p_min * q_min, p_max * q_min, p_min * q_max))
        return corners.amax(0).amax(1, keepdim=True)
    raise AssertionError(aggregate)


def vector_aggregate(aggregate: str, values: Tensor) -> Tensor:
    """Aggregate of a per-location vector (N, C, h, w) over channels → (N, 1, h, w)."""
    if aggregate == "norm":
        return (values * values).sum(1, keepdim=True).sqrt()
    if aggregate == "positive_norm":
        positive = values.clamp_min(0)
        return (positive * positive).sum(1, keepdim=True).sqrt()
    if aggregate == "sum":
        return values.sum(1, keepdim=True)
    if aggregate == "max":
        return values.amax(1, keepdim=True)
    raise AssertionError(aggregate)
