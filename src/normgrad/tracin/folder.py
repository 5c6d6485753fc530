"""``normgrad influence``'s one library call: image files in, an output folder with a gallery out.

The training set is a folder with one subfolder per class, named by the
class's index (``0``, ``1``, ...) or by one of the model's class names;
images are read one batch at a time (never all at once) and squashed to the
model's example input size, as the test images are.  The output folder follows
the output contract of ``normgrad explain`` (:mod:`normgrad.store`: atomic
files, a lock, a journal, ``summary.json``), one entry per test image::

    OUT/<name>.png      the test image, then its top proponents, then its top opponents, each with its map
    OUT/<name>.npy      float32 (2k, 1, H, W): the proponents' maps, then the opponents'
    OUT/summary.json    per test image: its class, and each training image's path, class and score
    OUT/index.html      the gallery: each test image, then its training images with their maps
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from normgrad.errors import NormGradError
from normgrad.images import load_image
from normgrad.run.files import IMAGE_SUFFIXES, expand_inputs
from normgrad.store import OutputConflict, OutputStore, encode_npy, encode_png, new_run_id
from normgrad.tracin.product import Influence, Progress, influence

MAX_TRAIN_IMAGES = 2_000_000
MAX_TEST_IMAGES = 1_000
TILE = 160


@dataclass(frozen=True)
class InfluenceRequest:
    """Everything ``normgrad influence`` needs; the CLI fills it from its options."""

    tests: tuple[str, ...]
    train: Path
    out: Path
    model: str = "efficientnet_lite0"
    weights: str | None = "default"
    num_classes: int | None = None
    device: str = "cpu"
    checkpoints: tuple[str, ...] = ()
    lr: tuple[float, ...] = (1.0,)
    layers: tuple[str, ...] | None = None
    extract: str = "conv1x1"
    top_k: int = 5
    batch_size: int = 64
    overwrite: bool = False


class ImageFolder(Dataset):
    """``root/<class>/<image>``: (preprocessed image, class index) items, read when asked for."""

    def __init__(self, root: Path, class_of: Callable[[str], int], preprocess: Callable[[Any], Tensor]) -> None:
        if not root.is_dir():
            raise NormGradError(f"--train {root} is not a folder; give a folder with one subfolder of images per class")
        self.items: list[tuple[Path, int]] = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = class_of(folder.name)
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            self.items += [(path, label) for path in files]
            if len(self.items) > MAX_TRAIN_IMAGES:
                raise NormGradError(f"--train {root} holds more than {MAX_TRAIN_IMAGES} images; give a smaller training set")
        if not self.items:
            raise NormGradError(f"--train {root} has no images in class subfolders (<class>/<image>.png)")
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.items[index]
        return self.preprocess(load_image(path)), label


def _class_resolver(class_names: list[str]) -> Callable[[str], int]:
    def class_of(folder: str) -> int:
        if folder.isdigit():
            index = int(folder)
            if index >= len(class_names):
                raise NormGradError(
                    f"training class folder {folder!r}: the model has {len(class_names)} classes (0..{len(class_names) - 1})"
                )
            return index
        exact = [i for i, name in enumerate(class_names) if name.casefold() == folder.casefold()]
        if not exact:
            raise NormGradError(f"training class folder {folder!r} is neither a class index nor one of the model's class names")
        return exact[0]

    return class_of


def run_influence(request: InfluenceRequest, progress: Progress | None = None) -> dict:
    """Load the model, read the images, find each test image's proponents and opponents, write ``request.out``; the manifest."""
    import normgrad as ng

    if len(request.lr) not in (1, max(len(request.checkpoints), 1)):
        raise NormGradError(f"--lr takes one learning rate, or one per checkpoint ({len(request.checkpoints)}); got {len(request.lr)}")
    loaded = ng.models.load(request.model, weights=request.weights, num_classes=request.num_classes, device=request.device)
    preprocess = replace(loaded.preprocess, fixed_size=loaded.preprocess.example_size)
    inputs = expand_inputs(list(request.tests), exclude=request.out)
    if not inputs or len(inputs) > MAX_TEST_IMAGES:
        raise NormGradError(f"give between 1 and {MAX_TEST_IMAGES} test images; got {len(inputs)}")
    tests = torch.stack([preprocess(load_image(item.path)) for item in inputs])
    train = ImageFolder(request.train, _class_resolver(loaded.class_names), preprocess)
    layers = list(request.layers) if request.layers else loaded.default_layers(tests[:1])
    lr = request.lr[0] if len(request.lr) == 1 else list(request.lr)
    result = influence(loaded.model, tests, train, layers=layers, extract=request.extract,
                       checkpoints=list(request.checkpoints) or None, lr=lr, top_k=request.top_k,
                       batch_size=request.batch_size, progress=progress)  # fmt: skip
    settings = {key: value for key, value in asdict(request).items() if key not in ("tests", "out", "overwrite")}
    settings = {**settings, "train": str(request.train), "method": "tracin", "layers": result.layers}
    return _write(request, settings, inputs, tests, train, result, loaded.class_names)


def _write(request, settings, inputs, tests, train: ImageFolder, result: Influence, class_names: list[str]) -> dict:
    store = OutputStore(request.out, new_run_id())
    try:
        plan = store.begin(settings, [(str(i.path), str(i.root)) for i in inputs], lambda name: [f"{name}.png", f"{name}.npy"],
                           resume=False, overwrite=request.overwrite, gallery=True)  # fmt: skip
        by_path = {str(item.path): index for index, item in enumerate(inputs)}
        sections = []
        for work in plan.work:
            t = by_path[work.path]
            record, picture, section = _entry(store, work, t, tests[t], train, result, class_names)
            store.save(work, {f"{work.name}.png": picture, f"{work.name}.npy": encode_npy(_maps(result, t))}, record)
            sections.append(section)
        manifest = store.finish(1)
        store.write("index.html", _page(sections).encode(), replace=True)
    except OutputConflict as error:
        raise NormGradError(str(error)) from None
    finally:
        store.close()
    return manifest.to_dict()


def _maps(result: Influence, t: int) -> np.ndarray:
    return torch.cat([result.proponent_maps[t], result.opponent_maps[t]]).numpy().astype(np.float32)


def _entry(store, work, t, test: Tensor, train: ImageFolder, result: Influence, class_names: list[str]):
    label = int(result.test_labels[t])
    tiles, captions, rows = [_photo(test)], [f"test: {class_names[label]}"], {}
    for kind, indices, maps in (("proponents", result.proponents[t], result.proponent_maps[t]),
                                ("opponents", result.opponents[t], result.opponent_maps[t])):  # fmt: skip
        rows[kind] = []
        for index, plane in zip(indices.tolist(), maps):
            image, train_label = train[index]
            score = float(result.scores[t, index])
            tiles.append(overlay(image, plane[0]))
            captions.append(f"{kind[:-1]} {score:+.3g} · {class_names[train_label]} · {train.items[index][0].name}")
            rows[kind].append({"path": str(train.items[index][0]), "index": index, "label": train_label,
                               "class": class_names[train_label], "score": score})  # fmt: skip
    strip = np.concatenate(tiles, axis=1)
    pictures = []
    for k, tile in enumerate(tiles):
        relative = f"gallery/img/{work.name}.{k}.png"
        store.write(relative, _png(tile), replace=True)
        pictures.append((relative, captions[k]))
    record = {"type": "image", "run": store.run, "name": work.name, "image": work.path, "files": work.files,
              "outputs": [{"png": f"{work.name}.png", "npy": f"{work.name}.npy"}],
              "label": label, "class": class_names[label], **rows}  # fmt: skip
    return record, _png(strip), (work.name, pictures)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    return encode_png(Image.fromarray(array))


def _photo(image: Tensor) -> np.ndarray:
    """A displayable (TILE, TILE, 3) uint8 picture of a preprocessed image (its own min-max)."""
    array = image.float()
    array = (array - array.min()) / max(float(array.max() - array.min()), 1e-12)
    array = torch.nn.functional.interpolate(array[None], size=(TILE, TILE), mode="bilinear", align_corners=False)[0]
    rgb = array.expand(3, -1, -1) if array.shape[0] == 1 else array[:3]
    return (rgb.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)


def overlay(image: Tensor, signed_map: Tensor) -> np.ndarray:
    """The image with its signed map blended over it: red where the pixels raise the score, blue where they lower it."""
    photo = _photo(image).astype(np.float32)
    plane = torch.nn.functional.interpolate(signed_map[None, None].float(), size=(TILE, TILE), mode="bilinear", align_corners=False)[0, 0]
    scale = max(float(plane.abs().max()), 1e-30)
    strength = (plane / scale).numpy()[..., None]
    red, blue = np.array([255.0, 0.0, 0.0]), np.array([0.0, 80.0, 255.0])
    colour = np.where(strength > 0, red, blue)
    alpha = 0.7 * np.abs(strength)
    return ((1 - alpha) * photo + alpha * colour).clip(0, 255).astype(np.uint8)


def _page(sections: list[tuple[str, list[tuple[str, str]]]]) -> str:
    rows = []
    for name, pictures in sections:
        figures = "".join(
            f'<figure><img src="{html.escape(src)}" alt=""><figcaption>{html.escape(caption)}</figcaption></figure>'
            for src, caption in pictures
        )
        rows.append(f"<section><h2>{html.escape(name)}</h2><div class=row>{figures}</div></section>")
    style = (
        "body{font-family:sans-serif;margin:1em}.row{display:flex;gap:6px;flex-wrap:wrap}"
        f"figure{{margin:0}}img{{width:{TILE}px;height:{TILE}px;image-rendering:pixelated}}figcaption{{font-size:12px}}"
    )
    head = "<p>Each test image, then its top proponents, then its top opponents; red: pixels that raise the score, blue: lower it.</p>"
    return f"<!doctype html><meta charset=utf-8><title>normgrad influence</title><style>{style}</style>{head}{''.join(rows)}\n"


__all__ = ["ImageFolder", "InfluenceRequest", "overlay", "run_influence"]
