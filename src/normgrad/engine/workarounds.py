"""Workarounds for PyTorch numerics bugs met on real models.

**BatchNorm backward at batch 1 with a channels-last gradient** (PyTorch 2.x,
CPU, float32 and float64, eval and train mode): when the gradient reaching
``native_batch_norm_backward`` has shape (1, C, H, W), is channels-last
(stride 1 on C) and its batch stride is less than ``C·H·W`` —
which autograd produces after token reshapes, as in timm's LeViT and
EfficientFormer — the input gradient is wrong (relative error 0.3–1.0).
For batch 1 the batch stride is never used to address memory, so the fix
is free: give the gradient its canonical batch stride (a view, no copy)
before the BatchNorm backward runs.  See the README's correctness section
for a five-line reproduction.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.autograd.graph import Node


def _canonical_batch_stride(grad: Tensor | None) -> Tensor | None:
    if grad is None or grad.dim() < 3 or grad.shape[0] != 1:
        return grad
    per_sample = grad[0].numel()
    if grad.stride(0) >= per_sample:
        return grad
    return grad.as_strided(grad.shape, (per_sample, *grad.stride()[1:]), grad.storage_offset())


def _fix_grad_outputs(grad_outputs: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...] | None:
    fixed = tuple(_canonical_batch_stride(grad) for grad in grad_outputs)
    return None if all(new is old for new, old in zip(fixed, grad_outputs)) else fixed  # None: unchanged


def needs_batchnorm_guard(model: nn.Module, batch: int) -> bool:
    """The bug needs a BatchNorm and a batch of 1 (the per-image steps of meta-saliency, single images)."""
    return batch == 1 and any("BatchNorm" in type(module).__name__ for module in model.modules())  # lazy: stops at the first


def guard_batchnorm_backward(*roots: Tensor) -> None:
    """Fix the gradients entering every BatchNorm backward node in the graph behind ``roots``.

    One walk of the autograd graph (0.6 ms for a ResNet-50), done only where
    :func:`needs_batchnorm_guard`; each BatchNorm node gets a pre-hook that
    lives as long as the graph.  Graphs built by ``torch.func`` transforms
    are left as they are.
    """
    stack: list[Node] = [root.grad_fn for root in roots if root.grad_fn is not None]
    seen: set[Node] = set(stack)
    while stack:
        node = stack.pop()
        name = node.name()
        if "BatchNorm" in name and "Backward" in name:
            node.register_prehook(_fix_grad_outputs)
        for next_node, _ in node.next_functions:
            if next_node is not None and next_node not in seen:
                seen.add(next_node)
                stack.append(next_node)


__all__ = ["guard_batchnorm_backward", "needs_batchnorm_guard"]
