"""Leave the user's model exactly as it was found.

Saliency runs in eval mode (BatchNorm running statistics, no dropout).  The
training flag of every submodule is restored afterwards, one by one, and
every hook is removed — in ``finally``, so also when an exception is
raised halfway.  Nothing else is ever changed: weights, buffers,
``requires_grad``, in-place flags and ``.grad`` are never written.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.utils.hooks import RemovableHandle

BIAS_CACHE = "attention_bias_cache"


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Set ``training=False`` on every submodule; restore each flag on exit.

    One exception: timm's attention modules that cache their position biases
    in eval mode (``attention_bias_cache``: LeViT, EfficientFormer v1/v2,
    TinyViT, EfficientViT-MSRA) keep ``training=True`` — their forward reads
    the flag only to bypass that cache — so their biases come from their
    current parameters (meta-saliency's stepped ones too) and nothing
    computed here is left cached in the model.
    """
    saved: list[tuple[nn.Module, bool]] = []  # only the flags that change: most models are already in eval mode
    try:
        for module in model.modules():
            wanted = isinstance(vars(module).get(BIAS_CACHE), dict)  # vars: nn.Module.__getattr__ is slow on missing names
            if module.training != wanted:
                saved.append((module, module.training))
                module.training = wanted
        yield
    finally:
        for module, training in saved:
            module.training = training


class Hooks:
    """A set of hook handles, all removed when the ``with`` block ends."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def add(self, handle: RemovableHandle) -> None:
        self._handles.append(handle)

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        while self._handles:
            self._handles.pop().remove()
