"""Meta-saliency: the pixels that matter for *training*.

Take one inner SGD step on the image's own loss, then compute any saliency
method on the updated model (first order: the step is not differentiated):

    θ' = θ − lr · ∇_θ CE(f_θ(x), y)            (adversarial: θ + lr · ∇_θ CE)
    meta map = method(f_θ', x, target)

The step is taken in eval mode (BatchNorm running statistics, no dropout)
on every trainable parameter (or those chosen with ``params=``), ``steps``
times.  With ``per_sample=True`` each image of a batch takes its own step,
as if alone; ``per_sample=False`` takes one step on the batch's mean loss,
as a training minibatch would.

The model is never stepped: θ' lives in a dict of tensors and the method
runs on :class:`WithParameters`, whose forward is
``torch.func.functional_call(model, θ', ...)``; module names, hooks and
layers are the model's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from normgrad.engine.model_state import eval_mode
from normgrad.engine.single_pass import check_inputs
from normgrad.errors import NormGradError
from normgrad.methods import normgrad
from normgrad.targets import Target, TrainingLoss, class_indices

Parameters = dict[str, Tensor]


class WithParameters(nn.Module):
    """``model`` evaluated with other parameter values, under the model's own module names.

    ``forward`` is ``functional_call(model, parameters, ...)``: the model's
    modules (and any hooks on them) run, its parameters are swapped for the
    call only, and nothing of the model is written.
    """

    def __init__(self, model: nn.Module, parameters: Mapping[str, Tensor]) -> None:
        super().__init__()
        object.__setattr__(self, "wrapped", model)  # not registered: names stay the model's own
        object.__setattr__(self, "parameter_values", dict(parameters))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.wrapped, self.parameter_values, args, kwargs)

    def named_modules(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        return self.wrapped.named_modules(*args, **kwargs)

    def modules(self):  # type: ignore[override]
        return self.wrapped.modules()


def meta_saliency(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    *,
    method: Callable[..., Any] = normgrad,
    lr: float = 2.5e-3,
    steps: int = 1,
    adversarial: bool = False,
    per_sample: bool = True,
    labels: Any = None,
    params: Iterable[str] | Callable[[str, nn.Parameter], bool] | None = None,
    chunk_size: int | None = 8,
    **method_kwargs: Any,
) -> Any:
    """``method`` on the model after ``steps`` SGD steps on ``CE(f(x), labels)``; returns what ``method`` returns.

    ``labels`` default to the target classes (the predicted class when
    ``target`` is None, the labels of a :class:`TrainingLoss` target, the
    predicted class for callable and unit targets).  ``params`` picks the
    parameters that step (names or a predicate ``(name, param)``); the
    others stay fixed.  ``chunk_size`` bounds how many per-sample gradients
    are computed at once (``None``: all).  ``lr=0`` gives the plain maps.
    """
    check_inputs(inputs)
    if steps < 0 or int(steps) != steps:
        raise NormGradError(f"steps must be a non-negative integer; got {steps}")
    if not lr >= 0:
        raise NormGradError(f"lr must be non-negative (use adversarial=True to step up the loss); got {lr}")
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
        target, labels = _resolve(model, inputs, target, labels)
    if lr == 0 or steps == 0:
        return method(model, inputs, target, **method_kwargs)
    trainable = _trainable(model, params)
    sign = 1.0 if adversarial else -1.0
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
        if not per_sample or inputs.shape[0] == 1:
            updated = _shared_steps(model, trainable, inputs, labels, lr * sign, steps)
            return method(WithParameters(model, updated), inputs, target, **method_kwargs)
        per_image = _per_sample_steps(model, trainable, inputs, labels, lr * sign, steps, chunk_size)
    results = []
    for index, updated in enumerate(per_image):
        sample = slice(index, index + 1)
        results.append(method(WithParameters(model, updated), inputs[sample], _target_of(target, index), **method_kwargs))
    return _concatenate(results)


def _resolve(model: nn.Module, inputs: Tensor, target: Target, labels: Any) -> tuple[Target, Tensor]:
    """Fix ``target=None`` to the predicted classes, and find the step's labels (validated)."""
    with torch.no_grad():
        output = model(inputs)
    if target is None:
        target = class_indices(None, output)
    if labels is None:
        if isinstance(target, TrainingLoss):
            labels = target.labels
        elif isinstance(target, (int, Sequence, Tensor)) and not isinstance(target, bool):
            labels = target
    return target, class_indices(labels, output, "labels")


def _trainable(model: nn.Module, params: Iterable[str] | Callable[[str, nn.Parameter], bool] | None) -> Parameters:
    named = dict(model.named_parameters())
    if params is None:
        chosen = {name: p for name, p in named.items() if p.requires_grad}
    elif callable(params):
        chosen = {name: p for name, p in named.items() if params(name, p)}
    else:
        wanted = list(params)
        unknown = [name for name in wanted if name not in named]
        if unknown:
            raise NormGradError(f"unknown parameter names {unknown[:5]}; names come from model.named_parameters()")
        chosen = {name: named[name] for name in wanted}
    if not chosen:
        raise NormGradError("no parameter to step: the model has no trainable parameters (or params= selects none)")
    return {name: p.detach() for name, p in chosen.items()}


def _loss(model: nn.Module, parameters: Parameters, inputs: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(functional_call(model, parameters, (inputs,)), labels)


def _shared_steps(model: nn.Module, parameters: Parameters, inputs: Tensor, labels: Tensor, signed_lr: float, steps: int) -> Parameters:
    """``steps`` SGD steps on the batch's mean loss."""
    for _ in range(steps):
        leaves = {name: p.detach().requires_grad_(True) for name, p in parameters.items()}
        grads = torch.autograd.grad(_loss(model, leaves, inputs, labels), list(leaves.values()))
        parameters = {name: p.detach() + signed_lr * g for (name, p), g in zip(leaves.items(), grads)}
    return parameters


def _per_sample_steps(
    model: nn.Module, parameters: Parameters, inputs: Tensor, labels: Tensor, signed_lr: float, steps: int, chunk_size: int | None
) -> list[Parameters]:
    """Each image's own ``steps`` SGD steps, per-sample gradients vectorised with ``torch.func.vmap``."""
    try:
        stacked = _vmapped_steps(model, parameters, inputs, labels, signed_lr, steps, chunk_size)
    except (RuntimeError, NotImplementedError):  # a model vmap cannot trace: one image at a time
        return [_shared_steps(model, parameters, inputs[i : i + 1], labels[i : i + 1], signed_lr, steps) for i in range(inputs.shape[0])]
    return [{name: value[i] for name, value in stacked.items()} for i in range(inputs.shape[0])]


def _vmapped_steps(
    model: nn.Module, parameters: Parameters, inputs: Tensor, labels: Tensor, signed_lr: float, steps: int, chunk_size: int | None
) -> Parameters:
    def one_image_loss(params: Parameters, image: Tensor, label: Tensor) -> Tensor:
        return _loss(model, params, image[None], label[None])

    per_sample_grad = grad(one_image_loss)
    current: Parameters = parameters
    for step in range(steps):
        in_dims = (None if step == 0 else 0, 0, 0)
        grads = vmap(per_sample_grad, in_dims=in_dims, chunk_size=chunk_size)(current, inputs, labels)
        base = current if step else {name: p.expand(inputs.shape[0], *p.shape) for name, p in parameters.items()}
        current = {name: base[name] + signed_lr * grads[name] for name in parameters}
    return current


def _target_of(target: Target, index: int) -> Target:
    if isinstance(target, Tensor) and target.dim() == 1:
        return target[index : index + 1]
    if isinstance(target, Sequence) and not isinstance(target, str):
        return [target[index]]
    if isinstance(target, TrainingLoss) and target.labels is not None and not isinstance(target.labels, int):
        labels = target.labels
        return TrainingLoss(labels[index : index + 1] if isinstance(labels, Tensor) else [labels[index]])
    return target


def _concatenate(results: list[Any]) -> Any:
    first = results[0]
    if isinstance(first, Tensor):
        return torch.cat(results)
    if isinstance(first, Mapping):
        return {key: _concatenate([r[key] for r in results]) for key in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_concatenate([r[i] for r in results]) for i in range(len(first)))
    raise NormGradError(f"cannot batch the results of method (type {type(first).__name__}); call meta_saliency per image")
