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

MASK = "mask"  # segment: the output holding the target class's predicted mask (1 inside), shown beside the map
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
    task: str = "classify"
    region: tuple[int, int, int, int] | None = None  # segment: (x0, y0, x1, y1) in the image's pixels

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

    if options.task == "detect":
        return _resolve_detect(options, checked, loaded)
    from normgrad.run.detect import refuse_detector

    refuse_detector(loaded)
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
    segment = options.task == "segment"
    predict = predict_preprocess(loaded, preprocess) if options.predict_at == "model" and not segment else None
    settings = {
        "model": loaded.name,
        "weights": None,  # filled in by into_folder (a hash of the tensors for a model passed in)
        "method": method.name,
        "default": ", ".join(f"{layer}: {name}" for layer, name in default_methods.items()) if default_methods else None,
        "input": input_settings(preprocess),
        "layers": layers,
        "combine": options.combine,
        "target": "auto" if target is None else target,
        "lr": options.inner_lr if method.inner_step else None,
        "steps": options.inner_steps if method.inner_step else None,
        "predict_at": options.predict_at,
        **({"save_layers": True} if options.save_layers else {}),  # absent unless given: records of earlier versions still match
        **({"task": "segment", "region": list(options.region) if options.region else None} if segment else {}),
        **options.output_settings(),
    }
    region = tuple(options.region) if segment and options.region else None
    return Setup(layers, target, settings, None, default_methods, preprocess, predict, options.task, region)  # type: ignore[arg-type]


def _resolve_detect(options: ExplainOptions, checked: Checked, loaded: Any) -> Setup:
    """``task="detect"``: the pyramid levels (or ``--layers``), the photo as the detector takes it (:mod:`normgrad.run.detect`)."""
    from normgrad.detection.detector import PhotoTensor
    from normgrad.run import detect

    detect.check_detector_model(loaded)
    layers = detect.layers_of(loaded, checked.layer_names)
    return Setup(layers, None, detect.settings(options, checked.method, loaded, layers), None, None, PhotoTensor())


def input_settings(preprocess: Any) -> dict:
    """The input sizes as the settings record them; ``multiple`` (each side a multiple of it) where it is not 1, so that
    records of a model taking any size still match those of earlier versions, and a changed multiple is other settings."""
    multiple = getattr(preprocess, "multiple", 1)
    return {"size": preprocess.size, "max_size": preprocess.max_size, "fixed_size": preprocess.fixed_size,
            **({"multiple": multiple} if multiple != 1 else {})}  # fmt: skip


def input_preprocess(loaded: Any, size: int | None) -> Any:
    """The preprocessing of this run: ``size`` (the shorter side), else the model's input policy (:mod:`normgrad.defaults`).

    With ``size`` the policy still says which sizes the model takes: each side stays a multiple of its ``multiple``
    (DLA needs 32), and a model that takes only its own size refuses ``size`` here rather than on every image.
    """
    from normgrad.defaults import input_policy_for

    if size is None:
        return input_policy_for(loaded)
    fixed = loaded.preprocess.fixed_size
    if fixed is not None:
        raise NormGradError(f"--size does not apply to {loaded.name}: its input size is fixed, {fixed[0]}x{fixed[1]}; drop --size")
    policy = input_policy_for(loaded)
    if policy.fixed_size is not None:
        height, width = policy.fixed_size
        raise NormGradError(
            f"--size does not apply to {loaded.name}: it takes only its own input size, {height}x{width} (its forward refused "
            "other sizes); drop --size"
        )
    return replace(policy, size=size, max_size=None)


def predict_preprocess(loaded: Any, explained: Any) -> Any:
    """The model's own preprocessing for the predictions, or ``None`` where it is the one explained (nothing to add).

    Its own size as the input policy takes it: each side a multiple of the policy's ``multiple`` (DLA's 224 × 336
    fails, 224 × 320 works), or the model's own square where it takes no other size."""
    from normgrad.defaults import input_policy_for

    own = replace(input_policy_for(loaded), max_size=None)
    if own == explained:
        return None
    return own


def files_of(options: ExplainOptions, setup: Setup):
    """``name -> [files]``: each output's overlay and map (one output per layer with ``combine="none"``; layers added with
    ``save_layers``)."""
    if options.task == "detect":
        from functools import partial

        from normgrad.run.detect import files_of as detect_files

        return partial(detect_files, options)
    layers = setup.layers or []
    suffixes = options.suffixes()

    def files(name: str) -> list[str]:
        stems = [f"{name}_{layer}" for layer in layers] if setup.per_layer else [name]
        stems += [f"{name}_{layer}" for layer in layers] if options.save_layers else []
        stems += [f"{name}_{MASK}"] if setup.task == "segment" else []
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
