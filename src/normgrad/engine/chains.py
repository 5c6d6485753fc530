"""Which block containers are chains: each element runs on the previous element's output alone (:class:`ChainProbe`).

A ``ModuleList`` (or ``ModuleDict``) says nothing about how its parent uses it.
``for block in self.blocks: x = block(x)`` makes a chain — a stage of blocks,
each output the next block's whole input, so each is a block output on the
network's spine.  HRNet's ``incre_modules`` (one per resolution, each fed
its own branch of the last stage) and ``downsamp_modules`` (each applied to a
running sum ``y = incre(yl[i]) + down(y)`` that ``forward_features`` computes
inline) are side-by-side: their outputs are branches and summands, never
the sum.  The forward pass tells them apart: in a chain, one argument of
element ``k`` is computed from element ``k − 1``'s output *alone* — every
path of the autograd graph from that argument back to the image passes
through the previous output (the previous output *dominates* it).
Parameters may join on the way (VOLO adds its position embedding between
two elements of ``network``), and so may anything that does not depend on
the image (masks, sizes); another image-derived tensor may not (a branch of
the stage before, a running sum's other summand).  Other arguments may
bring more (a U-Net decoder block's skip connection beside the running
state): the element mixes them itself, so its output is the new state,
whereas a parent that mixes the previous output with something else before
passing it on makes that output one summand of a state it never returns.

An ``nn.Sequential`` run by its own ``forward`` is a chain by definition.
Every element of a chain runs, in order: a list whose parent skips some
elements (HRNet's ``transition2.0`` and ``.1``, identities it passes by)
picks elements per branch and is not a chain.  An element that no hook
sees run (a ``ModuleList`` inside a list, a module called through
``.forward``) starts where its first descendant starts and ends where its
last one ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class Span:
    """Where a module ran in one forward pass: when it started and ended, and its inputs' and outputs' graph nodes."""

    start: int
    entry: list = field(default_factory=list)  # per argument, the grad_fn of each of its tensors that has one (first call)
    end: int = -1
    exit: list = field(default_factory=list)  # grad_fn of each output tensor that has one (first call)


class ChainProbe:
    """Hooks that record each module's :class:`Span`; after the pass, :meth:`chained` names the containers that are chains.

    The autograd graph must be built (``torch.enable_grad``, an image that
    requires grad) and still alive when :meth:`chained` is called: the spans
    hold its nodes, nothing else (no tensor is kept).
    """

    def __init__(self, modules: dict[str, nn.Module], image: torch.Tensor) -> None:
        self.modules = modules
        self.image = image.grad_fn  # the image as the graph's source (a non-leaf clone: its node)
        self.spans: dict[str, Span] = {}
        self.clock = 0

    def attach(self, hooks) -> None:
        """Register a pre- and a post-hook on every module (removed with ``hooks``)."""
        for name, module in self.modules.items():
            hooks.add(module.register_forward_pre_hook(self._starts(name), with_kwargs=True))
            hooks.add(module.register_forward_hook(self._ends(name)))

    def _starts(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self.clock += 1
            if name not in self.spans:
                arguments = [_nodes(value) for value in (*args, *kwargs.values())]
                self.spans[name] = Span(self.clock, [nodes for nodes in arguments if nodes])

        return hook

    def _ends(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            self.clock += 1
            span = self.spans.get(name)
            if span is not None and span.end < 0:
                span.end, span.exit = self.clock, _nodes(output)

        return hook

    def chained(self) -> set[str]:
        """The ``Sequential``/``ModuleList``/``ModuleDict`` containers whose elements form a chain (module docstring)."""
        return {name for name, module in self.modules.items() if isinstance(module, CONTAINERS) and self._is_chain(name, module)}

    def _is_chain(self, name: str, container: nn.Module) -> bool:
        if type(container).forward is nn.Sequential.forward:
            return True
        spans = [self._span(f"{name}.{key}" if name else key) for key, _ in container.named_children()]
        if len(spans) < 2:
            return True
        if any(span is None for span in spans):
            return False
        return all(
            span.start > previous.end and any(self._dominated(argument, previous.exit) for argument in span.entry)
            for previous, span in zip(spans, spans[1:])
        )

    def _span(self, name: str) -> Span | None:
        """The element's own span, or from its first descendant to start to its last one to end; ``None`` if nothing ran."""
        span = self.spans.get(name)
        if span is not None and span.end >= 0:
            return span
        inside = [s for n, s in self.spans.items() if n.startswith(name + ".") and s.end >= 0]
        if not inside:
            return None
        first, last = min(inside, key=lambda s: s.start), max(inside, key=lambda s: s.end)
        return Span(first.start, first.entry, last.end, last.exit)

    def _dominated(self, entry: list, exit: list) -> bool:
        """``entry`` depends on ``exit`` (some path back reaches it) and every path back to the image passes through it.

        A walk back from ``entry`` that stops at ``exit``: it must meet ``exit``
        and never the image.  Parameters end their paths (leaves), so what is
        computed from parameters alone (a position embedding) joins freely.
        """
        if self.image is None:
            return False
        stop = set(exit)
        seen: set = set()
        stack = list(entry)
        met = False
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            if node in stop:
                met = True
                continue
            if node is self.image:
                return False
            seen.add(node)
            stack.extend(following for following, _ in node.next_functions)
        return met


def _nodes(value: object, depth: int = 0) -> list:
    """The autograd nodes of the tensors in ``value`` (nested tuples, lists and dicts, a few levels deep)."""
    if isinstance(value, torch.Tensor):
        return [value.grad_fn] if value.grad_fn is not None else []
    if depth > 3:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [node for item in value for node in _nodes(item, depth + 1)]
    return []
