"""The paper's inner step, per image, and what it does to a loss.

For an image ``x̃`` (full or masked) with label ``y``:

==================  ================================================================
quantity            definition
==================  ================================================================
``G(x̃)``            ``∇_θ CE(f_θ(x̃), y)``, eval mode (BatchNorm running statistics)
step                ``θ' = θ − lr · G(x̃)``: plain SGD, every trainable parameter
reduction on ``z``  ``δ = L(z; θ) − L(z; θ')`` (> 0: the step helped ``z``)
first order         ``δ ≈ lr · ⟨∇_θ L(z; θ), G(x̃)⟩``
==================  ================================================================

``L(z; θ)`` is the cross-entropy of one image ``z`` (the unmasked image) or
the mean over a pool of held-out images of the same class.  Every image takes
its own step, as if alone; the model is never written (the stepped
parameters live in tensors and are swapped in per call by :class:`TensorSlots`).
Per-sample gradients are vectorised with ``torch.func.vmap`` for models it
can trace (``vectorize=True``), else taken one image at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

from normgrad.engine.model_state import TensorSlots, eval_mode

Parameters = dict[str, Tensor]


class InnerStep:
    """Per-image SGD steps of ``model`` (at its current parameters) and their effect on losses; dtype of the model's parameters."""

    def __init__(self, model: nn.Module, *, vectorize: bool = True, chunk_size: int = 64) -> None:
        self.model = model
        self.parameters: Parameters = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
        self.buffers: Parameters = {name: b.detach() for name, b in model.named_buffers()}
        self.vectorize = vectorize
        self.chunk_size = chunk_size
        self.dtype = next(iter(self.parameters.values())).dtype
        self.slots = TensorSlots(model)

    def _call(self, parameters: Parameters, inputs: Tensor) -> Tensor:
        return self.slots({**parameters, **self.buffers}, inputs)

    def gradients(self, inputs: Tensor, labels: Tensor) -> Parameters:
        """``G`` of each image: ``{name: (N, *shape)}``."""
        inputs = inputs.to(self.dtype)
        with torch.inference_mode(False), torch.enable_grad(), eval_mode(self.model):
            if self.vectorize:

                def loss(parameters: Parameters, image: Tensor, label: Tensor) -> Tensor:
                    return F.cross_entropy(self._call(parameters, image[None]), label[None])

                return vmap(grad(loss), in_dims=(None, 0, 0), chunk_size=self.chunk_size)(self.parameters, inputs, labels)
            per_image = []
            for image, label in zip(inputs, labels):
                leaves = {name: p.detach().requires_grad_(True) for name, p in self.parameters.items()}
                value = F.cross_entropy(self._call(leaves, image[None]), label[None])
                per_image.append(dict(zip(leaves, torch.autograd.grad(value, list(leaves.values())))))
            return {name: torch.stack([g[name] for g in per_image]) for name in self.parameters}

    def pool_gradient(self, inputs: Tensor, labels: Tensor) -> Parameters:
        """``∇_θ`` of the mean cross-entropy over a pool of images (for first-order effects on that pool)."""
        with torch.inference_mode(False), torch.enable_grad(), eval_mode(self.model):
            leaves = {name: p.detach().requires_grad_(True) for name, p in self.parameters.items()}
            value = F.cross_entropy(self._call(leaves, inputs.to(self.dtype)), labels)
            return dict(zip(leaves, torch.autograd.grad(value, list(leaves.values()))))

    @torch.no_grad()
    def losses(self, inputs: Tensor, labels: Tensor) -> Tensor:
        """``L(z; θ)`` of each image (N,)."""
        with eval_mode(self.model):
            return F.cross_entropy(self._call(self.parameters, inputs.to(self.dtype)), labels, reduction="none")

    @torch.no_grad()
    def losses_after_steps(self, gradients: Parameters, lr: float, inputs: Tensor, labels: Tensor) -> Tensor:
        """``L(z_i; θ − lr·G_i)`` for each ``i`` (N,): image ``i``'s step, evaluated on ``z_i``."""
        inputs = inputs.to(self.dtype)
        with eval_mode(self.model):
            if self.vectorize:

                def loss(step: Parameters, image: Tensor, label: Tensor) -> Tensor:
                    return F.cross_entropy(self._call(self._stepped(step, lr), image[None]), label[None])

                return vmap(loss, in_dims=(0, 0, 0), chunk_size=self.chunk_size)(gradients, inputs, labels)
            return torch.stack(
                [
                    F.cross_entropy(self._call(self._stepped(_row(gradients, i), lr), inputs[i : i + 1]), labels[i : i + 1])
                    for i in range(len(inputs))
                ]
            )

    @torch.no_grad()
    def pool_losses_after_steps(self, gradients: Parameters, lr: float, pool: Tensor, pool_labels: Tensor) -> Tensor:
        """The mean ``L`` over one pool of images after each image's step (N,)."""
        pool = pool.to(self.dtype)
        with eval_mode(self.model):
            if self.vectorize:

                def loss(step: Parameters) -> Tensor:
                    return F.cross_entropy(self._call(self._stepped(step, lr), pool), pool_labels)

                return vmap(loss, chunk_size=max(1, self.chunk_size // 4))(gradients)
            count = len(next(iter(gradients.values())))
            return torch.stack(
                [F.cross_entropy(self._call(self._stepped(_row(gradients, i), lr), pool), pool_labels) for i in range(count)]
            )

    def _stepped(self, step: Parameters, lr: float) -> Parameters:
        return {name: p - lr * step[name] for name, p in self.parameters.items()}


def _row(gradients: Parameters, index: int) -> Parameters:
    return {name: g[index] for name, g in gradients.items()}


def dot(a: Parameters, b: Parameters) -> Tensor:
    """``⟨a_i, b_i⟩`` summed over every parameter; ``b`` may be one set (no batch dimension) shared by all ``i``."""
    total = None
    for name, value in a.items():
        other = b[name]
        if other.dim() == value.dim() - 1:
            other = other.unsqueeze(0)
        term = (value * other).flatten(1).sum(1)
        total = term if total is None else total + term
    return total
