"""The options of one explain run, as one typed object checked once, before any model loads.

:class:`ExplainOptions` is what :func:`normgrad.explain` and ``normgrad explain`` build (the CLI maps each flag to
a field); :meth:`ExplainOptions.check` refuses every bad or ignored option with one :class:`NormGradError`, in the
CLI's words (the message names the flag: ``--size``, ``--layers``, ...).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from normgrad.combine import COMBINE_MODES
from normgrad.errors import NormGradError
from normgrad.meta import PAPER_LR, PAPER_STEPS
from normgrad.store.shards import STORAGES  # a .npy file per map, or each process's maps in one file

EMBEDDED = "efficientnet_lite0"
MIN_SIZE = 16  # the smallest --size: below it most models have no spatial map left
COMBINE_CHOICES = (*COMBINE_MODES, "none")
PREDICT_AT = ("model", "explained")
TASKS = ("classify", "detect", "segment")
MAP_DTYPES = ("float32", "float16")
OVERLAY_FORMATS = ("png", "jpg")  # lossless, or JPEG (quality 90, 4:4:4): ~5x faster to encode and ~2x smaller


@dataclass
class ExplainOptions:
    """Everything one run needs besides its inputs and output folder.

    ``model``: a name (:func:`normgrad.models.load`), a :class:`~normgrad.models.LoadedModel`, or an ``nn.Module``
    (with ``preprocess`` and ``class_names``, else ImageNet's).  ``method``: ``None`` is the model's default
    (:mod:`normgrad.defaults`).  ``batch_size``/``workers``/``writers``: ``None`` chooses them for the device.
    ``task``: ``"classify"``, or ``"detect"`` for a torchvision detector (:mod:`normgrad.run.detect`: one map per
    detection scoring at least ``min_score``, at most ``max_detections`` per photo).  ``predict_at``: ``"model"`` predicts
    (and picks the ``auto`` target) at the model's own input size, ``"explained"``
    at the size explained (no extra forward pass).
    """

    model: Any = EMBEDDED
    weights: str | Path | None = "default"
    device: str = "cpu"
    method: str | None = None
    layers: str | Sequence[str] | None = None
    size: int | None = None
    combine: str = "product"
    target: str | int | None = None
    top_k: int = 5
    batch_size: int | None = None
    lr: float | None = None
    steps: int | None = None
    workers: int | None = None
    writers: int | None = None
    save_layers: bool = False
    gallery: bool = True
    overlay: bool = True
    overlay_format: str = "png"
    npy: bool = True
    map_dtype: str = "float32"
    storage: str = "files"
    resume: bool = False
    overwrite: bool = False
    predict_at: str = "model"
    preprocess: Any = None
    task: str = "classify"
    min_score: float | None = None  # task="detect": explain the detections scoring at least this (default 0.5)
    max_detections: int | None = None  # task="detect": at most this many per photo, best first (default 10)
    class_names: Sequence[str] | None = field(default=None, repr=False)
    task: str = "classify"  # "segment": the target class's scores summed over region (or the class's predicted region)
    region: Sequence[int] | None = None  # (x0, y0, x1, y1) in the image's pixels, end exclusive; segment only

    def check(self) -> Checked:
        """Every option checked (no model loaded): the method (``None``: the default), layer names, target option."""
        from normgrad.pipeline import parse_target

        _choice("--combine", self.combine, COMBINE_CHOICES)
        _choice("--map-dtype", self.map_dtype, MAP_DTYPES)
        _choice("--overlay-format", self.overlay_format, OVERLAY_FORMATS)
        _choice("--storage", self.storage, STORAGES)
        _choice("--predict-at", self.predict_at, PREDICT_AT)
        _choice("--task", self.task, TASKS)
        self._check_task()
        for flag, value, low in (("--top-k", self.top_k, 0), ("--batch-size", self.batch_size, 1), ("--size", self.size, 1),
                                 ("--workers", self.workers, 0), ("--writers", self.writers, 0), ("--steps", self.steps, 1)):  # fmt: skip
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise NormGradError(f"{flag} must be an integer ≥ {low}; got {value!r}")
        if self.lr is not None and (
            isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr < 0
        ):
            raise NormGradError(f"--lr must be a finite number ≥ 0; got {self.lr!r}")
        method = self.method_object()
        from normgrad.run.detect import check_task

        check_task(self, method)
        if self.size is not None and self.size < MIN_SIZE:
            raise NormGradError(f"--size must be at least {MIN_SIZE} pixels; got {self.size}")
        check_device(self.device)
        if isinstance(self.model, str):
            check_weights(self.weights)
        layer_names = parse_layers(self.layers)
        target = parse_target(self.target)
        self._check_save_layers(method)
        self._check_outputs()
        return Checked(method, layer_names, target)

    def method_object(self) -> Any:
        """The registry method of ``method`` (``None`` for the default), with the options that would be ignored refused."""
        if self.method is None:
            given = [flag for flag, value in (("--lr", self.lr), ("--steps", self.steps)) if value is not None]
            if given:
                raise NormGradError(f"{' and '.join(given)} only apply to meta/adversarial methods; add --method meta (or meta:BASE)")
            return None
        (method,) = check_methods([self.method], lr=self.lr, steps=self.steps, layers=self.layers, target=self.target)
        return method

    @property
    def inner_lr(self) -> float:
        return PAPER_LR if self.lr is None else float(self.lr)

    @property
    def inner_steps(self) -> int:
        return PAPER_STEPS if self.steps is None else int(self.steps)

    def _check_save_layers(self, method: Any) -> None:
        """``--save-layers`` only where there are layer maps besides a combined one (``method`` ``None``: the default)."""
        if self.save_layers and method is not None and not method.uses_layers:
            raise NormGradError(f"--save-layers does not apply to {method.name}: it has no layer maps; drop --save-layers")
        if self.save_layers and self.combine == "none":
            raise NormGradError("--save-layers with --combine none: every layer's map is written already; drop --save-layers")

    def _check_task(self) -> None:
        """``--task segment`` explains one class (``--target``), in ``--region`` or where the model predicts it."""
        if self.task != "segment":
            if self.region is not None:
                raise NormGradError("--region applies to --task segment only (a class inside a region of a segmenter's output)")
            return
        if self.target is None or str(self.target).strip().lower() in ("", "auto"):
            raise NormGradError("--task segment needs --target CLASS (a class index or name): the class explained inside the region")
        if self.region is not None:
            box = tuple(self.region)
            valid = len(box) == 4 and all(isinstance(v, int) and not isinstance(v, bool) for v in box)
            if not valid or not (0 <= box[0] < box[2] and 0 <= box[1] < box[3]):
                raise NormGradError(f"--region must be x0,y0,x1,y1 in pixels with 0 ≤ x0 < x1 and 0 ≤ y0 < y1; got {self.region!r}")

    def _check_outputs(self) -> None:
        """Something must be written; float16 maps only where the map is a combination in [0, 1] (raw maps could overflow)."""
        if not self.overlay and not self.npy:
            raise NormGradError("--no-overlay with --no-npy leaves nothing to write; drop one of them")
        if not self.overlay and self.overlay_format != "png":
            raise NormGradError("--overlay-format sets the overlays' format, but --no-overlay writes none; drop one of them")
        if not self.npy and self.storage != "files":
            raise NormGradError("--storage shards keeps the maps in shards, but --no-npy writes none; drop one of them")
        if not self.npy and self.map_dtype != "float32":
            raise NormGradError("--map-dtype sets the .npy maps' type, but --no-npy writes none; drop one of them")
        if self.map_dtype == "float16" and self.save_layers:
            raise NormGradError(
                "--map-dtype float16 is for combined maps, which lie in [0, 1]; the layer maps of --save-layers are raw "
                "(they can exceed float16's range or precision): use float32 or drop --save-layers"
            )
        if self.map_dtype == "float16" and self.combine == "none":
            raise NormGradError(
                "--map-dtype float16 is for combined maps, which lie in [0, 1] (--combine product, geometric or sum); "
                "raw maps (--combine none) can exceed float16's range or precision: use float32"
            )

    def output_settings(self) -> dict:
        """The output options that differ from the defaults (absent when default: records of earlier runs still match)."""
        return {
            **({"overlay": False} if not self.overlay else {}),
            **({"overlay_format": self.overlay_format} if self.overlay_format != "png" else {}),
            **({"npy": False} if not self.npy else {}),
            **({"map_dtype": self.map_dtype} if self.map_dtype != "float32" else {}),
            **({"storage": self.storage} if self.storage != "files" else {}),
        }

    def suffixes(self) -> tuple[str, ...]:
        """The files written per output: the overlay (``.png`` or ``.jpg``) and the ``.npy`` map, as chosen."""
        return tuple(suffix for suffix, on in ((f".{self.overlay_format}", self.overlay), (".npy", self.npy)) if on)


@dataclass(frozen=True)
class Checked:
    """What :meth:`ExplainOptions.check` resolved before the model loads."""

    method: Any  # a registry Method, or None for the model's default
    layer_names: list[str] | None
    target: str | int | None


def _choice(flag: str, value: Any, valid: Sequence[str]) -> None:
    if value not in valid:
        from normgrad.errors import did_you_mean

        raise NormGradError(f"{flag} {value!r} is not valid{did_you_mean(str(value), list(valid))}; valid: {', '.join(valid)}")


def check_methods(names: Sequence[str], *, lr: float | None, steps: int | None, layers: Any = None, target: Any = None) -> list[Any]:
    """Registry methods, with ``--lr``/``--steps`` refused unless one of them takes an inner step, and ``--layers``
    (``--target``) refused unless one of them uses layers (the model): an option that would be ignored is an error."""
    from normgrad.registry import get_method

    methods = [get_method(name, lr=PAPER_LR if lr is None else lr, steps=PAPER_STEPS if steps is None else steps) for name in names]
    if not methods:
        raise NormGradError("no method given")
    given = [flag for flag, value in (("--lr", lr), ("--steps", steps)) if value is not None]
    if given and not any(m.inner_step for m in methods):
        raise NormGradError(f"{' and '.join(given)} only apply to meta/adversarial methods, not {', '.join(m.name for m in methods)}")
    if layers is not None and not any(m.uses_layers for m in methods):
        raise NormGradError(
            f"--layers does not apply to {', '.join(m.name for m in methods)}: "
            f"{'it works' if len(methods) == 1 else 'they work'} on the input image; drop --layers"
        )
    if target is not None and not any(m.needs_model for m in methods):
        raise NormGradError(f"--target does not apply to {', '.join(m.name for m in methods)}, which ignore the model; drop --target")
    return methods


def parse_layers(option: str | Sequence[str] | None) -> list[str] | None:
    """``--layers``: ``None`` for the default layers ('auto' or not given), else the names (comma-separated or a list)."""
    if option is None or (isinstance(option, str) and option.strip() == "auto"):
        return None
    parts = option.split(",") if isinstance(option, str) else list(option)
    if not all(isinstance(name, str) for name in parts):
        raise NormGradError("--layers must be layer names (strings), comma-separated, or 'auto'")
    names = [name.strip() for name in parts if name.strip()]
    if not names:
        raise NormGradError("--layers is empty; give comma-separated layer names or 'auto'")
    return names


def check_device(device: str) -> str:
    """``device`` if torch knows it and it is available here; one clear error otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise NormGradError(f"--device {device!r} is not a device; valid: cpu, cuda, cuda:N, mps") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise NormGradError(f"--device {device}: no CUDA device is available here; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise NormGradError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0..)")
        return device
    if parsed.type == "mps" and torch.backends.mps.is_available():
        return device
    raise NormGradError(f"--device {device}: not available here; valid: cpu{', cuda' if torch.cuda.is_available() else ''}")


def weights_option(weights: str | Path | None) -> str | Path | None:
    return None if weights is None or str(weights).lower() == "none" else weights


def weights_identity(weights: str | Path | None) -> Any:
    """How the settings record the weights: 'default', 'none', or the file with its size and content hash
    (:func:`normgrad.store.weights_identity`)."""
    from normgrad.store import weights_identity as identity_of

    return identity_of(weights_option(weights))


def check_weights(weights: str | Path | None) -> None:
    value = weights_option(weights)
    if value not in (None, "default") and not Path(value).is_file():
        raise NormGradError(f"weights file {str(value)!r} does not exist")


def background_threads(device: str) -> int:
    """Default readers and writers: on the CPU 2, or none (reading and writing in the model's thread) on a machine of
    at most 2 cores, where background work stalls the model's parallel kernels (192 photos, EfficientNet-Lite0's
    default, 2 cores: 27.7 s with none, 30.6 s with one reader and one writer, 32.5 s with two each); three quarters
    of the cores on an accelerator, where reading and writing are the bottleneck (measured on 16 cores: 12 writers
    2.2x faster than 4; docs/benchmarks.md), shared by the processes torchrun starts on this machine."""
    if not str(device).startswith("cuda"):
        return 0 if (os.cpu_count() or 1) <= 2 else 2
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(2, 3 * (os.cpu_count() or 2) // (4 * processes))
