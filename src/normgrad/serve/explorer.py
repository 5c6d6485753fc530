"""What the explorer computes, without the web: open photos, predict, explain, download; all through :mod:`normgrad.pipeline`.

==============================  ===============================================================================
call                            does
==============================  ===============================================================================
``open_upload(data, name)``     decode an upload (``images.load_image``: format, pixel and aspect limits), then
                                ``open_photo``
``open_listed(index)``          the same for the ``index``-th image of ``--images`` (never a path from a request)
``open_photo(photo, name)``     ``pipeline.prepare`` → ``pipeline.predict``; a token for the photo, the top-k
``explain(request)``            ``pipeline.run_method`` (or the model-free maps) → ``pipeline.at_image_size`` at
                                display size (longer side ≤ ``DISPLAY_SIDE``): the combined map and each layer's
``download(result, k, kind)``   map ``k`` at the photo's own size: float32 ``.npy`` or ``viz.overlay`` ``.png``
==============================  ===============================================================================

The engine hooks the model it explains, and every request shares one model,
so predictions and saliency run one at a time under ``self.model_lock``;
decoding, resizing and encoding run outside it (at most ``DECODE_SLOTS``
full-size decodes at once).  Photos and results live in LRU caches keyed by
random tokens, so two tabs never see each other's, bounded in entries and in
bytes: a photo keeps only its model input, a display-size JPEG and the
uploaded file's bytes (compressed; a listed image keeps its index), never
the decoded full-size picture — downloads at full size decode it again.
Work for a request can be cancelled (its client has gone, the server stops):
every module of the model then raises :class:`Cancelled` at its next call.
Maps travel as 16-bit levels between their min and max (value = min + q /
65535 · (max − min)): hover values exact to 1/65535 of the map's range.
"""

from __future__ import annotations

import base64
import io
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normgrad import images, pipeline
from normgrad.combine import COMBINE_MODES
from normgrad.defaults import defaults_for, input_policy_for
from normgrad.engine.model_state import Hooks
from normgrad.errors import NormGradError
from normgrad.gallery import pictures
from normgrad.meta import PAPER_LR as DEFAULT_LR
from normgrad.meta import PAPER_STEPS as DEFAULT_STEPS
from normgrad.viz import colour_table

DISPLAY_SIDE = 512
TOP_K = 5
MAX_PHOTOS, MAX_RESULTS = 16, 32
MAX_PHOTO_BYTES, MAX_RESULT_BYTES = 256 << 20, 64 << 20  # the caches' bounds in bytes (model inputs, JPEGs, uploads; maps)
DECODE_SLOTS = 2  # full-size decodes at once (an 8192² photo is 200 MB decoded)
MAX_LAYERS = 64  # layer names in one request
DEFAULT_METHOD = "default"  # normgrad explain's default (normgrad.defaults), where the model has one
NAMED_METHODS = ("normgrad", "selective", "meta", "adversarial", "meta:selective", "gradcam", "gradient", "input_x_gradient",
                 "guided_backprop", "integrated_gradients", "center", "random")  # fmt: skip


class NotFound(NormGradError):
    """A token or index the explorer does not know (expired from its cache, or never given)."""


class Cancelled(Exception):
    """The work for a request was stopped: its client has gone, or the server is stopping."""


@dataclass
class Photo:
    token: str
    name: str
    size: tuple[int, int]  # (w, h) of the original
    source: bytes | int  # the uploaded file's bytes, or the index of a listed image: decoded again for full-size downloads
    x: torch.Tensor  # (3, H, W) model input
    prediction: pipeline.Prediction
    display: bytes  # JPEG at display size
    display_size: tuple[int, int]  # (w, h)

    @property
    def nbytes(self) -> int:
        source = len(self.source) if isinstance(self.source, bytes) else 0
        return self.x.nbytes + len(self.display) + source + self.prediction.logits.nbytes * 2


@dataclass
class Result:
    token: str
    photo: Photo
    maps: dict[str, torch.Tensor]  # as the method returned them, (1, 1, h, w)
    combine: str
    names: list[str]  # what map k is: "combined" or a layer
    method: Any = None  # the registry method that made the maps

    @property
    def nbytes(self) -> int:  # the photo is counted in its own cache (it stays alive while a result holds it: bounded by both)
        return sum(m.nbytes for m in self.maps.values())


class Explorer:
    """The explorer's state: one loaded model, the photos opened, the results computed (see the module docstring)."""

    def __init__(self, loaded: Any, listed: Sequence[Path] = (), *, listed_names: Sequence[str] | None = None, device: str = "cpu") -> None:
        self.loaded, self.device = loaded, device
        self.listed = [Path(p) for p in listed]
        self.listed_names = list(listed_names) if listed_names is not None else [p.name for p in self.listed]
        self.model_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._photos: OrderedDict[str, Photo] = OrderedDict()
        self._results: OrderedDict[str, Result] = OrderedDict()
        self._decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)
        self.stopping = threading.Event()  # set when the server stops: running work is cancelled
        from normgrad.engine.layers import layer_names

        self.layer_names = layer_names(loaded.model)
        with self.model_lock:
            self.default_layers = list(loaded.default_layers())
            try:  # the default of `normgrad explain`: its layers, a method per layer, its input size
                self.defaults = defaults_for(loaded)
            except NormGradError:  # e.g. a model without two usable layers: the other methods only
                self.defaults = None
            policy = input_policy_for(loaded)  # the sizes the model takes (each side a multiple of what DLA, HRNet need)
        self.preprocess = self.defaults.preprocess if self.defaults is not None else policy
        self.own_preprocess = replace(policy, max_size=None)  # the model's own size, as the model takes it

    # -- what the page needs first

    def info(self) -> dict:
        from normgrad.formulas.aggregate import AGGREGATES
        from normgrad.formulas.extract import EXTRACTS

        return {
            "model": self.loaded.name,
            "classes": list(self.loaded.class_names),
            "methods": ([DEFAULT_METHOD] if self.defaults is not None else []) + list(NAMED_METHODS),
            "explain_default": None
            if self.defaults is None
            else {"layers": list(self.defaults.layers), "methods": dict(self.defaults.methods), "text": self.defaults.describe()},
            "pairs": [f"{e}+{a}" for e in EXTRACTS for a in AGGREGATES],
            "inner_step": ["meta", "adversarial", "meta:selective"],
            "model_free": ["center", "random"],
            "input_level": ["gradient", "input_x_gradient", "guided_backprop", "integrated_gradients", "center", "random"],
            "layers": self.layer_names,
            "default_layers": self.default_layers,
            "combine": list(COMBINE_MODES),
            "lr": DEFAULT_LR,
            "steps": DEFAULT_STEPS,
            "images": self.listed_names,
            "colormap": colour_table("jet").tolist(),
            "limits": {"megapixels": images.MAX_PIXELS / 1e6, "aspect_ratio": images.MAX_ASPECT_RATIO},
        }

    # -- photos

    def open_upload(self, data: bytes, name: str) -> dict:
        if not data:
            raise NormGradError("the upload is empty; choose an image file")
        return self.open_photo(data, name or "upload")

    def open_listed(self, index: int) -> dict:
        if not 0 <= index < len(self.listed):
            raise NotFound(f"no image {index}: --images lists {len(self.listed)} (0..{len(self.listed) - 1})")
        return self.open_photo(index, self.listed_names[index])

    def _decoded(self, source: bytes | int) -> Any:
        """The full-size picture of an upload's bytes or a listed image (one of ``DECODE_SLOTS`` decodes at a time)."""
        with self._decode_slots:
            return images.load_image(io.BytesIO(source) if isinstance(source, bytes) else self.listed[source])

    def open_photo(self, source: bytes | int, name: str) -> dict:
        """Decode, keep the model input and a display-size JPEG (the full-size picture is dropped), predict."""
        photo = self._decoded(source)
        x = pipeline.prepare(photo, self.preprocess)
        own = pipeline.prepare(photo, self.own_preprocess)  # predictions at the model's own size, as explain gives them
        own = x if own.shape == x.shape and self.own_preprocess.mean == self.preprocess.mean else own
        size = pictures.fit(*photo.size, DISPLAY_SIDE)
        shown = photo if size == photo.size else photo.resize(size, resample=2)  # bilinear
        display, original = pictures.jpeg(shown), photo.size
        del photo, shown
        with self.model_lock:
            prediction = pipeline.predict(self.loaded.model, own[None].to(self.device))
        if not prediction.finite(0):
            raise NormGradError("the model's output is NaN or infinite for this image")
        opened = Photo(secrets.token_urlsafe(12), name, original, source, x, prediction, display, size)
        self._remember(self._photos, opened.token, opened, MAX_PHOTOS, MAX_PHOTO_BYTES)
        return {
            "image": opened.token,
            "name": name,
            "width": original[0],
            "height": original[1],
            "display": list(size),
            "predictions": prediction.top(0, TOP_K, self.loaded.class_name),
            "predicted_at": [int(own.shape[-1]), int(own.shape[-2])],  # (width, height): the predictions' input
            "explained_at": [int(x.shape[-1]), int(x.shape[-2])],  # the maps' input (methods with a model)
        }

    def display(self, token: str) -> bytes:
        return self._get(self._photos, token, "image").display

    def listed_display(self, index: int) -> bytes:
        if not 0 <= index < len(self.listed):
            raise NotFound(f"no image {index}")
        photo = images.load_image(self.listed[index])
        return pictures.jpeg(photo.resize(pictures.fit(*photo.size, 160), resample=2))

    # -- maps

    def explain(self, request: Any, cancel: threading.Event | None = None) -> dict:
        """``{"image", "method", "target", "layers", "combine", "lr", "steps"}`` → the maps at display size (see the module docstring).

        ``cancel``: set it to stop the work (the client has gone); :class:`Cancelled` is raised.
        """
        if not isinstance(request, dict):
            raise NormGradError("the request must be a JSON object")
        unknown = set(request) - {"image", "method", "target", "layers", "combine", "lr", "steps"}
        if unknown:
            raise NormGradError(
                f"unknown field(s) {', '.join(sorted(map(str, unknown)))}; valid: image, method, target, layers, combine, lr, steps"
            )
        opened = self._get(self._photos, _text(request, "image"), "image")
        method = self._method(request)
        combine = request.get("combine") or "product"
        if combine not in COMBINE_MODES:
            raise NormGradError(f"unknown combine {combine!r}; valid: {', '.join(COMBINE_MODES)}")
        layer_option = request.get("layers")
        if layer_option is not None and not method.uses_layers:
            raise NormGradError(f"{method.name} works on the input image: it takes no layers")
        if layer_option is not None and (not isinstance(layer_option, list) or not all(isinstance(n, str) for n in layer_option)):
            raise NormGradError("layers must be a list of layer names (or null for the default layers)")
        if layer_option == []:
            raise NormGradError("no layer chosen; choose at least one")
        if layer_option is not None and len(layer_option) > MAX_LAYERS:
            raise NormGradError(f"{len(layer_option)} layers chosen; at most {MAX_LAYERS} at once")
        target_option = request.get("target")
        if isinstance(target_option, bool) or (target_option is not None and not isinstance(target_option, (int, str))):
            raise NormGradError("target must be 'auto', a class index or a class name")
        width, height = opened.size
        start = time.perf_counter()
        with self._model_turn(cancel), self._interruptible(cancel):  # the engine hooks the shared model: one call at a time
            if method.needs_model:
                target = pipeline.resolve_target(target_option, self.loaded.class_names)
                target = int(opened.prediction.classes[0]) if target is None else target
                if method.name == DEFAULT_METHOD and layer_option is None:
                    layers = list(self.defaults.layers)
                else:
                    layers = pipeline.resolve_layers(self.loaded, layer_option, opened.x[None]) if method.uses_layers else None
                x = opened.x[None].to(self.device)
                maps = pipeline.run_method(method, self.loaded.model, x, torch.tensor([target], device=self.device), layers)
            else:
                target, layers = None, None
                maps = pipeline.model_free_maps(method, 1, (height, width))
        result = Result(secrets.token_urlsafe(12), opened, maps, combine, [], method)
        shown = self._at_size(result, (opened.display_size[1], opened.display_size[0]))
        result.names = list(shown)
        self._remember(self._results, result.token, result, MAX_RESULTS, MAX_RESULT_BYTES)
        return {
            "result": result.token,
            "image": opened.token,
            "method": method.name,
            "target": None
            if target is None
            else pipeline.entry(target, float(opened.prediction.probabilities[0, target]), self.loaded.class_name),
            "layers": layers,
            "combine": combine if len(maps) > 1 else None,
            "display": list(opened.display_size),
            "size": [width, height],
            "maps": [_encoded(name, plane, maps.get(name)) for name, plane in shown.items()],
            "seconds": round(time.perf_counter() - start, 4),
        }

    def download(self, token: str, index: int, kind: str) -> tuple[bytes, str, str]:
        """Map ``index`` of a result at the photo's own size: ``(bytes, file name, media type)``; ``kind`` is npy or png."""
        from normgrad import viz
        from normgrad.store import encode_npy, encode_png

        result = self._get(self._results, token, "result")
        if not 0 <= index < len(result.names):
            raise NotFound(f"no map {index}: this result has {len(result.names)} (0..{len(result.names) - 1})")
        width, height = result.photo.size
        name = result.names[index]
        plane = self._at_size(result, (height, width))[name][0, 0].numpy().astype(np.float32)
        stem = f"{Path(result.photo.name).stem or 'image'}_{name}"
        if kind == "npy":
            return encode_npy(plane), f"{stem}.npy", "application/octet-stream"
        if kind == "png":
            return encode_png(viz.overlay(self._decoded(result.photo.source), plane)), f"{stem}.png", "image/png"
        raise NotFound(f"unknown download {kind!r}; valid: npy, png")

    # -- helpers

    def _method(self, request: dict) -> Any:
        from normgrad.meta import MAX_STEPS, check_step
        from normgrad.registry import get_method

        name = _text(request, "method", DEFAULT_METHOD if self.defaults is not None else "normgrad")
        lr, steps = request.get("lr"), request.get("steps")
        if name == DEFAULT_METHOD and self.defaults is not None:
            if lr is not None or steps is not None:
                raise NormGradError("lr and steps only apply to meta/adversarial methods, not the default")
            return self.defaults.method  # each layer with the default's method for it (selective for other layers)
        lr, steps = DEFAULT_LR if lr is None else lr, DEFAULT_STEPS if steps is None else steps
        check_step(lr, steps)  # bounded before any conversion: a JSON integer of 400 digits is refused, not a 500
        if steps < 1:
            raise NormGradError(f"steps must be an integer from 1 to {MAX_STEPS}; got {steps!r}")
        method = get_method(name, lr=float(lr), steps=int(steps))
        if (request.get("lr") is not None or request.get("steps") is not None) and not method.inner_step:
            raise NormGradError(f"lr and steps only apply to meta/adversarial methods, not {method.name}")
        return method

    def _at_size(self, result: Result, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """``pipeline.at_image_size``: one map as it is (signed maps keep their sign), several as combined + each layer."""
        maps = result.maps
        if len(maps) == 1:
            ((name, only),) = maps.items()
            shown = {name: pipeline.at_image_size(result.method, maps, size, one_as_is=True)[pipeline.COMBINED]}
        else:
            shown = pipeline.at_image_size(result.method, maps, size, result.combine, layers=True)
            shown = {pipeline.COMBINED: shown.pop(pipeline.COMBINED), **shown}
        pipeline.check_finite(shown)
        return shown

    def _remember(self, cache: OrderedDict, key: str, value: Any, limit: int, limit_bytes: int) -> None:
        """Add to an LRU cache, dropping the oldest entries past ``limit`` entries or ``limit_bytes`` (the newest always stays)."""
        with self._cache_lock:
            cache[key] = value
            while len(cache) > 1 and (len(cache) > limit or sum(entry.nbytes for entry in cache.values()) > limit_bytes):
                cache.popitem(last=False)

    def cached_bytes(self) -> int:
        """What the photo and result caches hold, in bytes (each bounded: ``MAX_PHOTO_BYTES``, ``MAX_RESULT_BYTES``)."""
        with self._cache_lock:
            return sum(entry.nbytes for cache in (self._photos, self._results) for entry in cache.values())

    @contextmanager
    def _model_turn(self, cancel: threading.Event | None) -> Iterator[None]:
        """Hold ``model_lock``, waiting for it only while the request is wanted."""
        while not self.model_lock.acquire(timeout=0.05):
            self._check(cancel)
        try:
            self._check(cancel)
            yield
        finally:
            self.model_lock.release()

    def _check(self, cancel: threading.Event | None) -> None:
        if self.stopping.is_set() or (cancel is not None and cancel.is_set()):
            raise Cancelled("the request was cancelled (its client has gone, or the server is stopping)")

    @contextmanager
    def _interruptible(self, cancel: threading.Event | None) -> Iterator[None]:
        """Every module of the model checks for cancellation when it is called (hooks removed on exit)."""

        def check(*_: Any) -> None:
            self._check(cancel)

        with Hooks() as hooks:
            for module in self.loaded.model.modules():
                hooks.add(module.register_forward_pre_hook(check))
            yield

    def _get(self, cache: OrderedDict, key: str, what: str) -> Any:
        with self._cache_lock:
            if key not in cache:
                raise NotFound(f"unknown or expired {what} {key!r}; open the image again")
            cache.move_to_end(key)
            return cache[key]


def _text(request: dict, key: str, default: str | None = None) -> str:
    value = request.get(key, default)
    if not isinstance(value, str) or not value:
        raise NormGradError(f"{key} must be a non-empty string")
    return value


def _encoded(name: str, plane: torch.Tensor, native: torch.Tensor | None) -> dict:
    """A map as 16-bit levels between its min and max, base64 (see the module docstring)."""
    values = plane[0, 0].numpy().astype(np.float64)
    low, high = float(values.min()), float(values.max())
    levels = np.round((values - low) / max(high - low, 1e-30) * 65535).astype("<u2")
    return {
        "layer": name,
        "min": low,
        "max": high,
        "shape": list(values.shape),
        "native": list(native.shape[-2:]) if native is not None else None,
        "data": base64.b64encode(levels.tobytes()).decode("ascii"),
    }
