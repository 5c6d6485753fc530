"""Leave the user's model exactly as it was found.

Saliency runs in eval mode (BatchNorm running statistics, no dropout).  The
training flag of every submodule is restored afterwards, one by one, and
every hook is removed — in ``finally``, so also when an exception is
raised halfway.  Nothing else is ever changed: weights, buffers,
``requires_grad``, in-place flags and ``.grad`` are never written.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
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


class TensorSlots:
    """Call ``model`` with other values for some of its parameters or buffers, each *slot* swapped exactly once.

    ``torch.func.functional_call`` swaps by name; a slot reachable by two
    names (a submodule registered under two names, e.g. timm CoaT's shared
    position encodings) is then swapped twice and restored to the swapped-in
    value (pytorch/pytorch#164759).  Here values are matched to the model's
    tensors by identity: ``values[name]`` replaces the tensor that
    ``model.named_parameters()`` / ``named_buffers()`` (any alias name, too)
    calls ``name`` in every slot that holds it — tied weights step together,
    as in training — and each slot gets its original object back in
    ``finally``: the same ``nn.Parameter``, same ``requires_grad``, same data.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.by_name: dict[str, Tensor] = {
            **dict(model.named_buffers(remove_duplicate=False)),
            **dict(model.named_parameters(remove_duplicate=False)),
        }
        self.slots: dict[int, list[tuple[dict[str, Any], str]]] = {}  # id(tensor) → every (module's dict, key) holding it
        for module in model.modules():  # each module object once
            for table in (module._parameters, module._buffers):
                for key, tensor in table.items():
                    if tensor is not None:
                        self.slots.setdefault(id(tensor), []).append((table, key))

    @contextmanager
    def replaced(self, values: Mapping[str, Tensor]) -> Iterator[None]:
        """``values`` in place of the named tensors for the ``with`` block; every slot restored on exit."""
        unknown = [name for name in values if name not in self.by_name]
        if unknown:
            raise KeyError(f"no parameter or buffer named {unknown[:3]}")
        changes = [(table, key, table[key], values[name]) for name in values for table, key in self.slots[id(self.by_name[name])]]
        try:
            for table, key, _, value in changes:
                table[key] = value
            yield
        finally:
            for table, key, original, _ in changes:
                table[key] = original

    def __call__(self, values: Mapping[str, Tensor], *args: Any, **kwargs: Any) -> Any:
        """``model(*args, **kwargs)`` with ``values`` swapped in (what ``functional_call`` does, per slot)."""
        with self.replaced(values):
            return self.model(*args, **kwargs)
