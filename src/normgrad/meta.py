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

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    vectorize: bool | None = None,
    chunk_size: int | None = 8,
    **method_kwargs: Any,
) -> Any:
    """``method`` on the model after ``steps`` SGD steps on ``CE(f(x), labels)``; returns what ``method`` returns.

    ``labels`` default to the target classes (the predicted class when
    ``target`` is None, the labels of a :class:`TrainingLoss` target, the
    predicted class for callable and unit targets).  ``params`` picks the
    parameters that step (names or a predicate ``(name, param)``); the
    others stay fixed.  Per-sample steps of a batch are vectorised with
    ``torch.func.vmap`` when ``vectorize`` (default: on CUDA; on CPU a loop
    is faster and leaner), ``chunk_size`` images at a time.  ``lr=0`` gives
    the plain maps.
    """
    check_inputs(inputs)
    if steps < 0 or int(steps) != steps:
        raise NormGradError(f"steps must be a non-negative integer; got {steps}")
    if not lr >= 0:
        raise NormGradError(f"lr must be non-negative (use adversarial=True to step up the loss); got {lr}")
    if lr == 0 or steps == 0:
        with eval_mode(model):
            return method(model, inputs, target, **method_kwargs)
    trainable = _trainable(model, params)
    signed_lr = lr if adversarial else -lr
    batch = inputs.shape[0]
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
        if not per_sample or batch == 1:
            updated, target = _shared_steps(model, trainable, inputs, target, labels, signed_lr, steps)
            return method(WithParameters(model, updated), inputs, target, **method_kwargs)
        vectorize = inputs.is_cuda if vectorize is None else vectorize
        updates = _per_sample_updates(model, trainable, inputs, target, labels, signed_lr, steps, vectorize, chunk_size)
        results = [
            method(WithParameters(model, updated), inputs[i : i + 1], sample_target, **method_kwargs)
            for i, (updated, sample_target) in enumerate(updates)
        ]
    return _concatenate(results)


def _per_sample_updates(
    model: nn.Module,
    parameters: Parameters,
    inputs: Tensor,
    target: Target,
    labels: Any,
    signed_lr: float,
    steps: int,
    vectorize: bool,
    chunk_size: int | None,
) -> Iterator[tuple[Parameters, Target]]:
    """Each image's updated parameters and target: vectorised, or one image at a time (lazily)."""
    if vectorize:
        with torch.no_grad():
            target, label_tensor = _labels_from(model(inputs), target, labels)
        try:
            per_image = _vmapped_steps(model, parameters, inputs, label_tensor, signed_lr, steps, chunk_size)
        except (RuntimeError, NotImplementedError) as error:  # a model torch.func cannot trace
            warnings.warn(f"per-sample steps cannot be vectorised for this model ({error}); stepping one image at a time", stacklevel=3)
        else:
            yield from ((updated, _sample_of(target, i)) for i, updated in enumerate(per_image))
            return
    for i in range(inputs.shape[0]):
        yield _shared_steps(model, parameters, inputs[i : i + 1], _sample_of(target, i), _sample_of(labels, i), signed_lr, steps)


def _labels_from(output: Tensor, target: Target, labels: Any) -> tuple[Target, Tensor]:
    """Fix ``target=None`` to the predicted classes, and find the step's labels (validated)."""
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


def _shared_steps(
    model: nn.Module, parameters: Parameters, inputs: Tensor, target: Target, labels: Any, signed_lr: float, steps: int
) -> tuple[Parameters, Target]:
    """``steps`` SGD steps on the batch's mean loss; the first forward also fixes the labels (and ``target=None``)."""
    for step in range(steps):
        leaves = {name: p.detach().requires_grad_(True) for name, p in parameters.items()}
        output = functional_call(model, leaves, (inputs,))
        if step == 0:
            target, label_tensor = _labels_from(output.detach(), target, labels)
        grads = torch.autograd.grad(F.cross_entropy(output, label_tensor), list(leaves.values()))
        parameters = {name: torch.add(p.detach(), g, alpha=signed_lr) for (name, p), g in zip(leaves.items(), grads)}
    return parameters, target


def _vmapped_steps(
    model: nn.Module, parameters: Parameters, inputs: Tensor, labels: Tensor, signed_lr: float, steps: int, chunk_size: int | None
) -> list[Parameters]:
    """Each image's own ``steps`` SGD steps, per-sample gradients vectorised with ``torch.func.vmap``."""

    def one_image_loss(params: Parameters, image: Tensor, label: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, params, (image[None],)), label[None])

    per_sample_grad = grad(one_image_loss)
    current = {name: p.expand(inputs.shape[0], *p.shape) for name, p in parameters.items()}
    for step in range(steps):
        grads = vmap(per_sample_grad, in_dims=(None if step == 0 else 0, 0, 0), chunk_size=chunk_size)(
            parameters if step == 0 else current, inputs, labels
        )
        current = {name: torch.add(current[name], grads[name], alpha=signed_lr) for name in parameters}
    return [{name: value[i] for name, value in current.items()} for i in range(inputs.shape[0])]


def _sample_of(spec: Any, index: int) -> Any:
    """The part of a per-sample target or labels spec that belongs to sample ``index``."""
    if isinstance(spec, Tensor) and spec.dim() == 1:
        return spec[index : index + 1]
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return [spec[index]]
    if isinstance(spec, TrainingLoss) and spec.labels is not None and not isinstance(spec.labels, int):
        return TrainingLoss(_sample_of(spec.labels, index))
    return spec


def _concatenate(results: list[Any]) -> Any:
    first = results[0]
    if isinstance(first, Tensor):
        return torch.cat(results)
    if isinstance(first, Mapping):
        return {key: _concatenate([r[key] for r in results]) for key in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_concatenate([r[i] for r in results]) for i in range(len(first)))
    raise NormGradError(f"cannot batch the results of method (type {type(first).__name__}); call meta_saliency per image")
