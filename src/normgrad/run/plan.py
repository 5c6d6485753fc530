"""Planning a run: the model, the method per layer, the layers, the target and the input sizes, then (into a folder)
the settings recorded, each input's name and files, and what is left to do (:meth:`normgrad.store.OutputStore.begin`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normgrad import pipeline
from normgrad.errors import NormGradError
from normgrad.run.loading import Prepare
from normgrad.run.options import Checked, ExplainOptions, weights_identity, weights_option

FALLBACK_METHOD = "selective"  # layers the default names no method for (normgrad.defaults.FINE_METHOD)


@dataclass
class Setup:
    """What rank 0 decided and every rank uses: layers, target, settings, the plan, the default's method per layer,
    the preprocessing of the input explained and of the predictions."""

    layers: list[str] | None
    target: int | None
    settings: dict
    plan: Any
    default_methods: dict[str, str] | None  # the default method (no --method): layer -> registry method
    preprocess: Any
    predict_preprocess: Any = None  # None: predictions at the size explained

    @property
    def prepare(self) -> Prepare:
        return Prepare(self.preprocess, self.predict_preprocess)

    @property
    def per_layer(self) -> bool:
        return self.settings["combine"] == "none" and self.layers is not None and len(self.layers) > 1

    def method(self, method: Any) -> Any:
        """The method run: ``method`` as checked, or (``None``) the default's per-layer method, rebuilt on each rank
        (a method is not sent between processes)."""
        if self.default_methods is None:
            return method
        from normgrad.defaults import layered

        return layered(self.default_methods)


def load_model(options: ExplainOptions) -> Any:
    """The :class:`~normgrad.models.LoadedModel` of ``options.model``: loaded by name, as given, or an ``nn.Module`` wrapped."""
    from normgrad import models

    model = options.model
    if isinstance(model, str):
        return models.load(model, weights=weights_option(options.weights), device=options.device)
    if isinstance(model, models.LoadedModel):
        return model
    if isinstance(model, nn.Module):
        preprocess = options.preprocess if options.preprocess is not None else models.Preprocess()
        names = list(options.class_names) if options.class_names is not None else _class_names(model, preprocess)
        return models.LoadedModel(f"module:{type(model).__name__}", model, preprocess, names)
    raise NormGradError(f"model must be a name (e.g. 'efficientnet_lite0'), a LoadedModel or an nn.Module; got {type(model).__name__}")


def _class_names(model: nn.Module, preprocess: Any) -> list[str]:
    """ImageNet's names for a 1000-class output, else ``class i`` (one forward pass at the model's size tells)."""
    from normgrad.engine.model_state import eval_mode
    from normgrad.models import imagenet_classes

    device = next(model.parameters()).device
    try:
        with torch.no_grad(), eval_mode(model):
            output = model(torch.zeros(1, 3, *preprocess.example_size, device=device))
    except Exception as error:
        message = " ".join(str(error).split())[:200]
        raise NormGradError(
            f"the model failed on a {preprocess.example_size[0]}x{preprocess.example_size[1]} input ({type(error).__name__}: {message}); "
            "pass preprocess= the preprocessing it takes (normgrad.models.Preprocess) and class_names="
        ) from None
    count = output.shape[-1] if isinstance(output, torch.Tensor) and output.dim() == 2 else 0
    return imagenet_classes() if count == 1000 else [f"class {i}" for i in range(count)]


def model_device(loaded: Any) -> str:
    try:
        return str(next(loaded.model.parameters()).device)
    except StopIteration:
        return "cpu"


def model_identity(options: ExplainOptions, loaded: Any) -> Any:
    """The weights as the settings record them: by name and file for loaded models, by a hash of the tensors otherwise."""
    if isinstance(options.model, str):
        return weights_identity(options.weights)
    digest = hashlib.sha256()
    for name, tensor in loaded.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"sha256": digest.hexdigest()}


def resolve(options: ExplainOptions, checked: Checked, loaded: Any) -> Setup:
    """The method (the model's default without ``method``), layers, target and input sizes; settings as recorded."""
    from normgrad.defaults import defaults_for

    method = checked.method
    defaults = defaults_for(loaded) if method is None else None
    default_methods = dict(defaults.methods) if defaults is not None else None
    if defaults is not None:
        method = defaults.method
    if defaults is not None and checked.layer_names is None:
        layers = list(defaults.layers)
    else:
        layers = pipeline.resolve_layers(loaded, checked.layer_names) if method.uses_layers else None
    if default_methods is not None:
        default_methods = {layer: default_methods.get(layer, FALLBACK_METHOD) for layer in layers}
    target = pipeline.resolve_target(checked.target, loaded.class_names) if method.needs_model else None
    preprocess = input_preprocess(loaded, options.size)
    predict = predict_preprocess(loaded, preprocess) if options.predict_at == "model" else None
    settings = {
        "model": loaded.name,
        "weights": None,  # filled in by into_folder (a hash of the tensors for a model passed in)
        "method": method.name,
        "default": ", ".join(f"{layer}: {name}" for layer, name in default_methods.items()) if default_methods else None,
        "input": {"size": preprocess.size, "max_size": preprocess.max_size, "fixed_size": preprocess.fixed_size},
        "layers": layers,
        "combine": options.combine,
        "target": "auto" if target is None else target,
        "lr": options.inner_lr if method.inner_step else None,
        "steps": options.inner_steps if method.inner_step else None,
        "predict_at": options.predict_at,
        **({"save_layers": True} if options.save_layers else {}),  # absent unless given: records of earlier versions still match
        **options.output_settings(),
    }
    return Setup(layers, target, settings, None, default_methods, preprocess, predict)


def input_preprocess(loaded: Any, size: int | None) -> Any:
    """The preprocessing of this run: ``size`` (the shorter side), else the model's input policy (:mod:`normgrad.defaults`)."""
    from normgrad.defaults import input_policy_for

    if size is not None:
        fixed = loaded.preprocess.fixed_size
        if fixed is not None:
            raise NormGradError(f"--size does not apply to {loaded.name}: its input size is fixed, {fixed[0]}x{fixed[1]}; drop --size")
        return replace(loaded.preprocess, size=size, max_size=None)
    return input_policy_for(loaded)


def predict_preprocess(loaded: Any, explained: Any) -> Any:
    """The model's own preprocessing for the predictions, or ``None`` where it is the one explained (nothing to add)."""
    own = loaded.preprocess
    if own == explained:
        return None
    return own


def files_of(options: ExplainOptions, setup: Setup):
    """``name -> [files]``: each output's overlay and map (one output per layer with ``combine="none"``; layers added with
    ``save_layers``)."""
    layers = setup.layers or []
    suffixes = options.suffixes()

    def files(name: str) -> list[str]:
        stems = [f"{name}_{layer}" for layer in layers] if setup.per_layer else [name]
        stems += [f"{name}_{layer}" for layer in layers] if options.save_layers else []
        return [f"{stem}{suffix}" for stem in stems for suffix in suffixes]

    return files


def into_folder(options: ExplainOptions, setup: Setup, loaded: Any, paths: list[tuple[str, str]], out: Path, world: int) -> Any:
    """Rank 0: lock ``out``, name every input and decide what to do (``setup.plan``); the store, open."""
    from normgrad.store import OutputStore, new_run_id

    setup.settings["weights"] = model_identity(options, loaded)
    store = OutputStore(out, new_run_id(), storage=options.storage)
    try:
        setup.plan = store.begin(setup.settings, paths, files_of(options, setup), resume=options.resume, overwrite=options.overwrite,
                                 world=world, gallery=options.gallery)  # fmt: skip
    except BaseException:
        store.close()
        raise
    return store
