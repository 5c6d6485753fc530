"""Meta-saliency: the pixels that matter for *training*.

Take one inner SGD step on the image's own loss, then compute any saliency
method on the updated model (first order: the step is not differentiated):

    θ' = θ − lr · ∇_θ L(f_θ(x), y)             (adversarial: θ + lr · ∇_θ L)
    meta map = method(f_θ', x, target)

``L`` is the cross-entropy of the model's logits (a tensor output; the
``"out"`` entry or only tensor of a dict, e.g. torchvision segmentation;
a Hugging Face ``ModelOutput``'s ``logits``;
the first element of a tuple, e.g. GoogLeNet's aux outputs) with class
labels (N,) or, for dense logits (N, K, H, W), label maps (N, H, W) —
or any ``loss(output, labels)``.  Parameters that do not take part in the
loss (aux heads that do not run in eval mode, unused caches) keep their
values.

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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from normgrad import outputs
from normgrad.engine.model_state import eval_mode
from normgrad.engine.single_pass import check_inputs
from normgrad.engine.workarounds import guard_batchnorm_backward, needs_batchnorm_guard
from normgrad.errors import NormGradError
from normgrad.methods import normgrad
from normgrad.segmentation import Region
from normgrad.targets import Target, TrainingLoss, class_indices

PAPER_LR, PAPER_STEPS = 2.5e-3, 1  # the paper's inner step: one SGD step of learning rate 0.0025 (the defaults everywhere)

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
    lr: float = PAPER_LR,
    steps: int = PAPER_STEPS,
    adversarial: bool = False,
    per_sample: bool = True,
    labels: Any = None,
    loss: Callable[[Any, Any], Tensor] | None = None,
    params: Iterable[str] | Callable[[str, nn.Parameter], bool] | None = None,
    vectorize: bool | None = None,
    chunk_size: int | None = 8,
    **method_kwargs: Any,
) -> Any:
    """``method`` on the model after ``steps`` SGD steps on the loss ``L(f(x), labels)``; returns what ``method`` returns.

    ``labels`` default to the target classes (the predicted class when
    ``target`` is None, the labels of a :class:`TrainingLoss` target, the
    predicted class — per pixel for dense logits — for callable and unit
    targets).  ``loss(output, labels) -> (N,) or scalar`` replaces the
    cross-entropy (its mean is minimised; ``labels`` are those of the
    images stepped, or None).  ``params`` picks the parameters that step
    (names or a predicate ``(name, param)``); the others stay fixed.
    Per-sample steps of a batch are vectorised with ``torch.func.vmap`` when
    ``vectorize`` (default: on CUDA; on CPU a loop is faster and leaner),
    ``chunk_size`` images at a time.  ``lr=0`` gives the plain maps.
    """
    check_inputs(inputs, model)
    if steps < 0 or int(steps) != steps:
        raise NormGradError(f"steps must be a non-negative integer; got {steps}")
    if not lr >= 0:
        raise NormGradError(f"lr must be non-negative (use adversarial=True to step up the loss); got {lr}")
    if loss is not None and not callable(loss):
        raise NormGradError(f"loss must be a callable (output, labels) -> per-sample losses; got {type(loss).__name__}")
    if lr == 0 or steps == 0:
        with eval_mode(model):
            return method(model, inputs, target, **method_kwargs)
    trainable = _trainable(model, params)
    step = _Step(-lr if not adversarial else lr, steps, loss)
    batch = inputs.shape[0]
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
        if not per_sample or batch == 1:
            updated, target = _shared_steps(model, trainable, inputs, target, labels, step)
            return method(WithParameters(model, updated), inputs, target, **method_kwargs)
        vectorize = inputs.is_cuda if vectorize is None else vectorize
        updates = _per_sample_updates(model, trainable, inputs, target, labels, step, vectorize, chunk_size)
        results = [
            method(WithParameters(model, updated), inputs[i : i + 1], sample_target, **method_kwargs)
            for i, (updated, sample_target) in enumerate(updates)
        ]
    return _concatenate(results)


@dataclass(frozen=True)
class _Step:
    """One SGD step's settings: signed learning rate, number of steps, the loss (None: cross-entropy)."""

    signed_lr: float
    steps: int
    loss: Callable[[Any, Any], Tensor] | None

    def value(self, output: Any, labels: Any) -> Tensor:
        """The scalar minimised: the mean of the per-sample loss."""
        if self.loss is None:
            return F.cross_entropy(logits_of(output), labels)
        value = self.loss(output, labels)
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise NormGradError(f"loss must return a float tensor (per-sample losses or their mean); got {type(value).__name__}")
        return value.mean()


def logits_of(output: Any) -> Tensor:
    """The logits in a model output (:func:`normgrad.outputs.logits_of`: a tensor, a Hugging Face ``ModelOutput``'s
    ``logits``, a dict's ``"out"`` entry or only tensor, a tuple's first element)."""
    logits = outputs.logits_of(output)
    if logits is None or logits.dim() < 2:
        raise NormGradError(
            f"meta-saliency cannot find the logits in the model output {outputs.describe(output)}; "
            "pass loss=callable(output, labels) for the inner step"
        )
    return logits


def _per_sample_updates(
    model: nn.Module,
    parameters: Parameters,
    inputs: Tensor,
    target: Target,
    labels: Any,
    step: _Step,
    vectorize: bool,
    chunk_size: int | None,
) -> Iterator[tuple[Parameters, Target]]:
    """Each image's updated parameters and target: vectorised, or one image at a time (lazily)."""
    if vectorize:
        with torch.no_grad():
            target, label_tensor = _labels_from(model(inputs), target, labels, step)
        try:
            per_image = _vmapped_steps(model, parameters, inputs, label_tensor, step, chunk_size)
        except (RuntimeError, NotImplementedError, NormGradError) as error:  # a model torch.func cannot trace
            warnings.warn(f"per-sample steps cannot be vectorised for this model ({error}); stepping one image at a time", stacklevel=3)
        else:
            yield from ((updated, _sample_of(target, i)) for i, updated in enumerate(per_image))
            return
    for i in range(inputs.shape[0]):
        yield _shared_steps(model, parameters, inputs[i : i + 1], _sample_of(target, i), _sample_of(labels, i), step)


def _labels_from(output: Any, target: Target, labels: Any, step: _Step) -> tuple[Target, Any]:
    """Fix ``target=None`` to the predicted classes, and find the step's labels (validated)."""
    output = outputs.unwrap(output)  # a Hugging Face ModelOutput: its logits
    classifier = isinstance(output, Tensor) and output.dim() == 2
    if target is None and classifier:
        target = class_indices(None, output)
    if labels is None:
        if isinstance(target, TrainingLoss):
            labels = target.labels
        elif isinstance(target, (int, Sequence, Tensor)) and not isinstance(target, bool):
            labels = target
    if step.loss is not None:
        return target, labels
    logits = logits_of(output)
    if logits.dim() == 2:
        return target, class_indices(labels, logits, "labels")
    return target, _label_maps(labels, logits)


def _label_maps(labels: Any, logits: Tensor) -> Tensor:
    """Per-position labels (N, *spatial) for dense logits (N, K, *spatial); the prediction by default."""
    expected = (logits.shape[0], *logits.shape[2:])
    if labels is None:
        return logits.detach().argmax(1)
    label_maps = torch.as_tensor(labels, device=logits.device)
    if tuple(label_maps.shape) != expected or label_maps.is_floating_point():
        raise NormGradError(
            f"labels for dense logits {tuple(logits.shape)} must be integer label maps of shape {expected}; "
            "or pass loss=callable(output, labels)"
        )
    bad = (label_maps < 0) | (label_maps >= logits.shape[1])
    if bool(bad.any()):
        raise NormGradError(f"labels contain class {int(label_maps[bad][0])}, out of range for {logits.shape[1]} classes")
    return label_maps.long()


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
    model: nn.Module, parameters: Parameters, inputs: Tensor, target: Target, labels: Any, step: _Step
) -> tuple[Parameters, Target]:
    """``steps`` SGD steps on the batch's mean loss; the first forward also fixes the labels (and ``target=None``).

    A parameter the loss does not depend on keeps its value; if none does,
    a warning says so (the maps are then the plain maps).
    """
    for index in range(step.steps):
        leaves = {name: p.detach().requires_grad_(True) for name, p in parameters.items()}
        output = functional_call(model, leaves, (inputs,))
        if index == 0:
            target, labels = _labels_from(_detached(output), target, labels, step)
        value = step.value(output, labels)
        if needs_batchnorm_guard(model, inputs.shape[0]):
            guard_batchnorm_backward(value)
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        if index == 0 and all(g is None for g in grads):
            warnings.warn("no stepped parameter takes part in the loss: the meta maps equal the plain maps", stacklevel=4)
        parameters = {
            name: p.detach() if g is None else torch.add(p.detach(), g, alpha=step.signed_lr) for (name, p), g in zip(leaves.items(), grads)
        }
    return parameters, target


def _detached(output: Any) -> Any:
    output = outputs.unwrap(output)  # a Hugging Face ModelOutput: its logits
    if isinstance(output, Tensor):
        return output.detach()
    if isinstance(output, Mapping):
        return type(output)((key, _detached(value)) for key, value in output.items()) if isinstance(output, dict) else output
    if isinstance(output, tuple) and hasattr(output, "_fields"):  # a namedtuple (GoogLeNetOutputs)
        return type(output)(*(_detached(value) for value in output))
    if isinstance(output, (tuple, list)):
        return type(output)(_detached(value) for value in output)
    return output


def _vmapped_steps(
    model: nn.Module, parameters: Parameters, inputs: Tensor, labels: Any, step: _Step, chunk_size: int | None
) -> list[Parameters]:
    """Each image's own ``steps`` SGD steps, per-sample gradients vectorised with ``torch.func.vmap``."""
    if not isinstance(labels, Tensor):
        raise NormGradError("vectorised steps need tensor labels")

    def one_image_loss(params: Parameters, image: Tensor, label: Tensor) -> Tensor:
        return step.value(functional_call(model, params, (image[None],)), label[None])

    per_sample_grad = grad(one_image_loss)
    current = {name: p.expand(inputs.shape[0], *p.shape) for name, p in parameters.items()}
    for index in range(step.steps):
        grads = vmap(per_sample_grad, in_dims=(None if index == 0 else 0, 0, 0), chunk_size=chunk_size)(
            parameters if index == 0 else current, inputs, labels
        )
        current = {name: torch.add(current[name], grads[name], alpha=step.signed_lr) for name in parameters}
    return [{name: value[i] for name, value in current.items()} for i in range(inputs.shape[0])]


def _sample_of(spec: Any, index: int) -> Any:
    """The part of a per-sample target or labels spec (classes, label maps) that belongs to sample ``index``."""
    if isinstance(spec, Tensor) and spec.dim() >= 1:
        return spec[index : index + 1]
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return [spec[index]]
    if isinstance(spec, Region):
        return spec.sample(index)
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
