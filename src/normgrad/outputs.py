"""Where the scores are in a model's output: the one reading every target, meta-saliency and prediction share.

A model may return

* a tensor — class scores ``(N, K)`` or dense scores ``(N, K, H, W)``;
* a Hugging Face ``ModelOutput`` (``ImageClassifierOutput``,
  ``SemanticSegmenterOutput``...) — its ``logits`` are the scores; its other
  fields (the loss, hidden states, attentions) are not;
* a dict — torchvision's segmentation models: ``"out"`` (``"aux"`` is an
  auxiliary head's);
* a tuple — its first element (GoogLeNet's and Inception's training
  outputs put the main logits first).

:func:`unwrap` is applied once, before any target sees the output, so that
class targets, :class:`~normgrad.targets.TrainingLoss`, region targets and
callables all read a Hugging Face model's ``logits`` as they read a plain
model's tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor


def unwrap(output: Any) -> Any:
    """A Hugging Face ``ModelOutput``'s ``logits`` tensor; any other output as it is."""
    if isinstance(output, Tensor):
        return output
    # a dataclass-style output without the mapping interface has the attribute
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    return logits if isinstance(logits, Tensor) else output


def logits_of(output: Any) -> Tensor | None:
    """The score tensor of a model output (see the module docstring), or ``None`` when there is none to read."""
    output = unwrap(output)
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        tensors = {key: value for key, value in output.items() if isinstance(value, Tensor)}
        return tensors.get("out", next(iter(tensors.values())) if len(tensors) == 1 else None)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def describe(output: Any) -> str:
    """An output in words, for error messages: ``of shape (2, 10)``, ``(a dict with keys out, aux)``."""
    output = unwrap(output)
    if isinstance(output, Tensor):
        return f"of shape {tuple(output.shape)}"
    if isinstance(output, Mapping):
        return f"(a {type(output).__name__} with keys {', '.join(map(str, output))})"
    return f"(a {type(output).__name__})"


__all__ = ["describe", "logits_of", "unwrap"]
