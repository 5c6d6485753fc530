"""TracIn at the pixel level: which locations of a training image move a test example's loss.

TracInCP (Pruthi et al., NeurIPS 2020) scores a training example ``z`` for a
test example ``z′`` by the checkpoints of a training run:

    TracIn(z, z′) = Σ_c η_c · ⟨∇_W L_c(z), ∇_W L_c(z′)⟩

(``W``: the chosen layers' weights; ``η_c``: the learning rate at checkpoint
``c``).  Positive: a step on ``z`` lowers ``z′``'s loss (a *proponent*);
negative: it raises it (an *opponent*).  NormGrad's decomposition
``∇_W L(z) = Σ_u p_u q_uᵀ`` splits each dot product over the locations
``u`` of ``z`` (:mod:`normgrad.tracin.bilinear`), so the score is the
sum of a signed map:

    map_u(z, z′) = Σ_c η_c · p_u(z)ᵀ ∇_W L_c(z′) q_u(z)

The test gradients are computed once per checkpoint and kept
(:meth:`TracIn.test_gradients`); each training batch then takes one forward
and one backward per checkpoint.  :meth:`TracIn.scores` gives the example
level only (one dot product per pair: the cheap pass over a whole training
set), :meth:`TracIn.maps` the maps as well, :meth:`TracIn.self_influence`
``TracIn(z, z)`` and its map ``Σ_c η_c p_uᵀ G_c(z) q_u`` — large for
examples the model finds hard or mislabelled.

Checkpoints are state dicts (or files holding one); the model is never
loaded with them: each runs as :class:`normgrad.WithParameters`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
from torch import Tensor, nn

from normgrad.engine.describe import model_device
from normgrad.engine.layers import Layers
from normgrad.engine.model_state import eval_mode
from normgrad.errors import NormGradError
from normgrad.meta import WithParameters
from normgrad.tracin.bilinear import Gradient, flatten
from normgrad.tracin.capture import LayerChoice, Loss, choose_layers, cross_entropy, one_pass

Checkpoint = Union[Mapping[str, Tensor], str, Path]


@dataclass
class TestGradients:
    """The chosen layers' loss gradients of the test examples, per checkpoint: ``per_checkpoint[c][layer]``."""

    per_checkpoint: list[dict[str, Gradient]]
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, indices: Sequence[int] | Tensor) -> TestGradients:
        """The gradients of the test examples at ``indices`` only."""
        index = torch.as_tensor(indices, dtype=torch.long)
        chosen = [{layer: {key: value[index.to(value.device)] for key, value in gradient.items()} for layer, gradient in checkpoint.items()}
                  for checkpoint in self.per_checkpoint]  # fmt: skip
        return TestGradients(chosen, self.labels[index.to(self.labels.device)])


@dataclass
class InfluenceMaps:
    """``scores`` (N, T) and ``maps[layer]`` (N, T, h, w): example ``n``'s influence on test ``t`` and where it lies.

    For self-influence ``T`` is 1 and ``scores`` is (N,).  ``maps[layer]``
    summed over its locations is the score at that layer
    (``layer_scores[layer]``); prefix tokens count in the score, not the map.
    """

    scores: Tensor
    maps: dict[str, Tensor]
    layer_scores: dict[str, Tensor]


class TracIn:
    """TracInCP restricted to ``layers``, with per-location maps; see the module docstring.

    ``extract`` per layer (one for all, or ``{name: extract}``): ``"conv1x1"``
    (a virtual identity after the layer: any layer, the default), ``"scaling"``
    (a virtual per-channel gain) or ``"layer"`` (the layer's own ``Conv2d`` or
    ``Linear`` weight and bias, as Captum's ``TracInCP(layers=[...])``).
    ``checkpoints``: state dicts or files (``torch.save`` of one, or of a dict with
    a ``"state_dict"``); ``None``: the model's current weights.  ``lr``: one
    learning rate, or one per checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Layers,
        *,
        extract: str | Mapping[str, str] = "conv1x1",
        checkpoints: Sequence[Checkpoint] | None = None,
        lr: float | Sequence[float] = 1.0,
        loss: Loss = cross_entropy,
    ) -> None:
        self.model = model
        self.layers: list[LayerChoice] = choose_layers(model, layers, extract)
        self.checkpoints = [None] if checkpoints is None else [load_checkpoint(model, c, i) for i, c in enumerate(checkpoints)]
        if not self.checkpoints:
            raise NormGradError("checkpoints is empty: give at least one state dict or file, or None for the model's current weights")
        rates = [float(lr)] * len(self.checkpoints) if isinstance(lr, (int, float)) else [float(r) for r in lr]
        if len(rates) != len(self.checkpoints):
            raise NormGradError(f"lr has {len(rates)} values for {len(self.checkpoints)} checkpoints; give one, or one per checkpoint")
        self.lrs = rates
        self.loss = loss

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def _models(self):
        for state, rate in zip(self.checkpoints, self.lrs):
            yield rate, (self.model if state is None else WithParameters(self.model, state))

    def _batch(self, inputs: Tensor, labels: Tensor | Sequence[int] | None) -> tuple[Tensor, Tensor]:
        device = model_device(self.model)
        inputs = inputs.to(device)
        if labels is None:
            labels = predicted_classes(self.model, inputs)
        labels = torch.as_tensor(labels, device=device)
        if labels.shape != (inputs.shape[0],) or labels.is_floating_point():
            raise NormGradError(f"labels must be {inputs.shape[0]} integer classes, one per input; got shape {tuple(labels.shape)}")
        return inputs, labels.long()

    def test_gradients(self, inputs: Tensor, labels: Tensor | Sequence[int] | None = None) -> TestGradients:
        """``∇_W L_c(z′)`` of each test example at each checkpoint, kept for every training batch (labels: default predicted)."""
        inputs, labels = self._batch(inputs, labels)
        per_checkpoint = []
        for _, model in self._models():
            captured = one_pass(model, inputs, labels, self.layers, self.loss)
            per_checkpoint.append({c.layer.name: c.step.gradient() for c in captured})
        return TestGradients(per_checkpoint, labels)

    def _check(self, tests: TestGradients) -> None:
        if len(tests.per_checkpoint) != len(self.checkpoints) or any(set(g) != set(self.layer_names) for g in tests.per_checkpoint):
            raise NormGradError("these test gradients were computed with other checkpoints or layers; compute them with this TracIn")

    def scores(self, inputs: Tensor, labels: Tensor | Sequence[int] | None, tests: TestGradients) -> Tensor:
        """Example-level TracIn (N, T): one forward/backward per checkpoint, then one dot product per pair."""
        self._check(tests)
        inputs, labels = self._batch(inputs, labels)
        total = None
        for (rate, model), test in zip(self._models(), tests.per_checkpoint):
            for captured in one_pass(model, inputs, labels, self.layers, self.loss):
                part = rate * (flatten(captured.step.gradient()) @ flatten(test[captured.layer.name]).to(captured.step.p.dtype).T)
                total = part if total is None else total + part
        assert total is not None
        return total

    def maps(self, inputs: Tensor, labels: Tensor | Sequence[int] | None, tests: TestGradients) -> InfluenceMaps:
        """Scores and per-location maps of ``inputs`` on every test example: one forward/backward per checkpoint."""
        self._check(tests)
        inputs, labels = self._batch(inputs, labels)
        maps: dict[str, Tensor] = {}
        layer_scores: dict[str, Tensor] = {}
        for (rate, model), test in zip(self._models(), tests.per_checkpoint):
            for captured in one_pass(model, inputs, labels, self.layers, self.loss):
                name = captured.layer.name
                terms = rate * captured.step.terms(test[name])
                _accumulate(layer_scores, name, terms.flatten(2).sum(-1))
                _accumulate(maps, name, captured.grid(terms))
        return InfluenceMaps(sum(layer_scores.values()), maps, layer_scores)  # type: ignore[arg-type]

    def self_influence(self, inputs: Tensor, labels: Tensor | Sequence[int] | None = None) -> InfluenceMaps:
        """``TracIn(z, z)`` (N,) and its maps (N, 1, h, w): one forward/backward per checkpoint."""
        inputs, labels = self._batch(inputs, labels)
        maps: dict[str, Tensor] = {}
        layer_scores: dict[str, Tensor] = {}
        for rate, model in self._models():
            for captured in one_pass(model, inputs, labels, self.layers, self.loss):
                name = captured.layer.name
                terms = rate * captured.step.self_terms(captured.step.gradient())
                _accumulate(layer_scores, name, terms.flatten(1).sum(-1))
                _accumulate(maps, name, captured.grid(terms))
        return InfluenceMaps(sum(layer_scores.values()), maps, layer_scores)  # type: ignore[arg-type]


def _accumulate(into: dict[str, Tensor], key: str, value: Tensor) -> None:
    into[key] = value if key not in into else into[key] + value


@torch.no_grad()
def predicted_classes(model: nn.Module, inputs: Tensor) -> Tensor:
    """The model's predicted classes (eval mode, flags restored)."""
    with eval_mode(model):
        output = model(inputs)
    if not isinstance(output, Tensor) or output.dim() != 2:
        raise NormGradError("labels=None needs class scores (N, num_classes) from the model to take the predicted class; pass labels")
    return output.argmax(1)


def load_checkpoint(model: nn.Module, checkpoint: Checkpoint, index: int = 0) -> dict[str, Tensor]:
    """A checkpoint as a full state dict for ``model`` (every parameter and buffer, on the model's device), or one clear error."""
    where = f"checkpoint {index}"
    if isinstance(checkpoint, (str, Path)):
        where = f"checkpoint {str(checkpoint)!r}"
        try:
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError) as error:  # a missing file, not a torch file, unsafe pickles
            raise NormGradError(f"cannot read {where}: {error}") from None
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
            checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping):
        raise NormGradError(f"{where} must be a state dict (name → tensor) or a file holding one; got {type(checkpoint).__name__}")
    expected = model.state_dict()
    missing = [name for name in expected if name not in checkpoint]
    extra = [name for name in checkpoint if name not in expected]
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, which the model does not"
        raise NormGradError(f"{where} does not fit the model: it {what} ({len(missing)} missing, {len(extra)} unknown names)")
    device = model_device(model)
    state = {}
    for name, value in checkpoint.items():
        if not isinstance(value, Tensor) or value.shape != expected[name].shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise NormGradError(f"{where}: {name!r} has shape {shape}, the model's is {tuple(expected[name].shape)}")
        state[name] = value.to(device=device, dtype=expected[name].dtype)
    return state


__all__ = ["Checkpoint", "InfluenceMaps", "TestGradients", "TracIn", "load_checkpoint", "predicted_classes"]
