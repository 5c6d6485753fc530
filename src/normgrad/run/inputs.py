"""What ``normgrad.explain`` accepts as inputs, and how each kind is read.

=====================================  ===========================================================================
inputs                                 read as
=====================================  ===========================================================================
a path, folder or glob; a list of them  :func:`normgrad.run.files.expand_inputs` (the CLI's semantics), decoded by
                                       :class:`~normgrad.run.loading.ImageFiles` in reader processes
a ``torch.utils.data.Dataset``          ``dataset[i]`` in reader processes: an image or an ``(image, target)`` pair
a list of images                        the same, in this process
a ``DataLoader``                        iterated in this process (its own workers read); batches are split into images
a tensor (N, C, H, W)                   N images
=====================================  ===========================================================================

An image is a ``PIL.Image``, a (C, H, W) or (H, W) tensor (``C`` = 1, 3 or 4), or a (H, W[, C]) NumPy array:
``uint8`` pixels, or floats in [0, 1] (what torchvision's ``ToTensor`` gives), turned into 8-bit pixels by
rounding, which is exact for floats that came from 8-bit pixels.  Floats outside [0, 1] (an image already
normalised) are refused: normgrad preprocesses the image for the model itself, and guessing the inverse
normalisation would be silently wrong.  A pair's ``target``, an integer class, is kept as the image's ``label``.

Images of a dataset are named by their position (``000017``), and identified by a hash of their pixels, so that
a resumed run into a folder redoes an image whose pixels changed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from normgrad.errors import NormGradError
from normgrad.run.files import Input, expand_inputs
from normgrad.run.loading import Item, Prepare, read_in_order

DATASET_ROOT = "/<dataset>"  # the root of a dataset's virtual paths (absolute: the same from any folder): "/<dataset>/000017" is "000017"
NO_IMAGES = "no image given (folders are searched for .jpg, .png, .webp, .tif, .bmp, .gif files; hidden ones are skipped)"


@dataclass
class Inputs:
    """The inputs of one run: image files (``files``) or in-memory images (``source``: a dataset, list, tensor or loader)."""

    files: list[Input] | None = None
    source: Any = None
    count: int | None = None  # None: a loader of unknown length
    problems: list[tuple[str, str, bool]] = field(default_factory=list)  # folders not searched: (folder, why, counts as skipped)

    @property
    def paths(self) -> list[tuple[str, str]]:
        """``(path, root)`` per input, as the output store names them (datasets: ``/<dataset>/000017``)."""
        if self.files is not None:
            return [(str(i.path), str(i.root)) for i in self.files]
        if self.count is None:
            raise NormGradError("writing into a folder needs inputs of known length; this DataLoader has no len(); pass its dataset")
        digits = max(6, len(str(self.count - 1)))
        return [(f"{DATASET_ROOT}/{i:0{digits}d}", DATASET_ROOT) for i in range(self.count)]

    def read(self, entries: list[tuple[int, Path, str]], prepare: Prepare, workers: int) -> Iterator[Item]:
        """The items of ``entries`` ``(index, path, name)``, in order; unreadable ones are error items."""
        from normgrad.run.loading import loader

        if self.files is not None:
            return loader(entries, prepare, workers)
        if isinstance(self.source, DataLoader):
            return _from_loader(self.source, entries, prepare)
        in_process = isinstance(self.source, (torch.Tensor, list, tuple))
        return read_in_order(DatasetImages(self.source, entries, prepare), 0 if in_process else workers)


def collect(inputs: Any, exclude: str | Path | None = None) -> Inputs:
    """Classify ``inputs`` (see the module table); an empty or unknown kind is one error."""
    if isinstance(inputs, (str, os.PathLike, np.ndarray)) or type(inputs).__module__.startswith("PIL"):
        inputs = [inputs]  # one path or one image
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() not in (3, 4):
            raise NormGradError(f"a tensor of images must be (N, C, H, W) (or one (C, H, W) image); got shape {tuple(inputs.shape)}")
        batch = inputs[None] if inputs.dim() == 3 else inputs
        return _nonempty(Inputs(source=batch.detach().cpu(), count=batch.shape[0]))
    if isinstance(inputs, DataLoader):
        return Inputs(source=inputs, count=_loader_length(inputs))
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(i, (str, os.PathLike)) for i in inputs):
        problems: list[tuple[str, str, bool]] = []
        files = expand_inputs(list(inputs), exclude=exclude, problems=problems)
        if not files:
            unreadable = [f"{folder}: {why}" for folder, why, counts in problems if counts]
            raise NormGradError(f"no image given; {unreadable[0]}" if unreadable else NO_IMAGES)
        return Inputs(files=files, problems=problems)
    if isinstance(inputs, (list, tuple, Dataset)) or (hasattr(inputs, "__getitem__") and hasattr(inputs, "__len__")):
        try:
            count = len(inputs)
        except TypeError:
            raise NormGradError(
                "a Dataset without len() (an IterableDataset) is read through a DataLoader: pass DataLoader(dataset)"
            ) from None
        return _nonempty(Inputs(source=inputs, count=count))
    raise NormGradError(
        "inputs must be a path, folder or glob (or a list of them), a torch Dataset or DataLoader of images or (image, target) "
        f"pairs, a list of images, or an (N, C, H, W) tensor; got {type(inputs).__name__}"
    )


def _nonempty(inputs: Inputs) -> Inputs:
    if inputs.count == 0:
        raise NormGradError("no image given: the dataset is empty")
    return inputs


def _loader_length(loader: DataLoader) -> int | None:
    """The number of images a DataLoader yields, when its order is fixed (a sequential sampler over a sized dataset)."""
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, SequentialSampler):
        return None
    try:
        count = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return None
    if loader.drop_last and loader.batch_size:
        count -= count % loader.batch_size
    return count


class DatasetImages(Dataset):
    """``(index, path, name)`` entries of a dataset (or list, or tensor) as :class:`Item` s; a bad item becomes an error item."""

    def __init__(self, source: Any, entries: list[tuple[int, Path, str]], prepare: Prepare) -> None:
        self.source, self.entries, self.prepare = source, entries, prepare

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, position: int) -> Item:
        index, path, name = self.entries[position]
        try:
            value = self.source[index]
        except Exception as error:  # the user's dataset failed on this item: skip it, say why
            return Item(index, Path(path), name, error=f"the dataset's item {index} could not be read: {type(error).__name__}: {error}")
        return item_of(value, index, Path(path), name, self.prepare)


def item_of(value: Any, index: int, path: Path, name: str, prepare: Prepare) -> Item:
    """An :class:`Item` from a dataset's value: an image or an ``(image, target)`` pair."""
    try:
        image, label = split_pair(value)
        photo = photo_of(image)
        tensor, predict_tensor = prepare(photo)
    except NormGradError as error:
        return Item(index, path, name, error=f"item {index}: {error}")
    except Exception as error:  # an odd value the conversion did not foresee: this item only
        return Item(index, path, name, error=f"item {index} is not an image normgrad can read: {type(error).__name__}: {error}")
    identity = {"path": os.path.abspath(path), "pixels": pixel_hash(photo), "size": list(photo.size)}
    return Item(index, path, name, tensor, photo, identity=identity, predict_tensor=predict_tensor, label=label)


def split_pair(value: Any) -> tuple[Any, int | None]:
    """``(image, label)`` from an image or an ``(image, target)`` pair (a target that is not one integer class: no label)."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and not _is_image(value[1]):
        return value[0], _label(value[1])
    return value, None


def _label(target: Any) -> int | None:
    if isinstance(target, bool):
        return None
    if isinstance(target, (int, np.integer)):
        return int(target)
    if isinstance(target, torch.Tensor) and target.numel() == 1 and not target.is_floating_point():
        return int(target)
    return None


def _is_image(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim >= 2 or type(value).__module__.startswith("PIL")


def photo_of(image: Any) -> Any:
    """An 8-bit RGB ``PIL.Image`` from a PIL image, tensor or array (see the module docstring); sizes checked."""
    from PIL import Image

    from normgrad.images import check_size, to_rgb

    if isinstance(image, Image.Image):
        photo = to_rgb(image)
    elif isinstance(image, torch.Tensor):
        if image.dim() == 3:
            if image.shape[0] not in (1, 3, 4):
                raise NormGradError(f"an image tensor must be (C, H, W) with C = 1, 3 or 4; got shape {tuple(image.shape)}")
            image = image.permute(1, 2, 0)
        elif image.dim() != 2:
            raise NormGradError(f"an image tensor must be (C, H, W) or (H, W); got shape {tuple(image.shape)}")
        photo = _from_pixels(image.detach().cpu().numpy())
    elif isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise NormGradError(f"an image array must be (H, W) or (H, W, C) with C = 1, 3 or 4; got shape {image.shape}")
        photo = _from_pixels(image)
    else:
        raise NormGradError(
            "an image must be a PIL image, a (C, H, W) tensor or an (H, W, C) array (or an (image, target) pair); "
            f"got {type(image).__name__}"
        )
    try:
        check_size(*photo.size)
    except NormGradError as error:
        raise NormGradError(f"the image {error}") from None
    return photo


def _from_pixels(array: np.ndarray) -> Any:
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise NormGradError("the image has NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise NormGradError(
                f"a float image must hold pixel values in [0, 1] (as ToTensor gives); its values lie in [{low:.3g}, {high:.3g}]: "
                "pass the image before normalisation (normgrad applies the model's own preprocessing)"
            )
        pixels = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    else:
        raise NormGradError(f"image pixels must be uint8 or floats in [0, 1]; got {array.dtype}")
    image = Image.fromarray(np.ascontiguousarray(pixels))
    return image.convert("RGB") if image.mode != "RGBA" else _on_white(image)


def _on_white(image: Any) -> Any:
    from normgrad.images import to_rgb

    return to_rgb(image)


def pixel_hash(photo: Any) -> str:
    """A dataset image's identity: the SHA-256 of its size and 8-bit RGB pixels."""
    digest = hashlib.sha256(f"{photo.size[0]}x{photo.size[1]}:".encode())
    digest.update(photo.tobytes())
    return digest.hexdigest()


def _from_loader(loader: DataLoader, entries: list[tuple[int, Path, str]], prepare: Prepare) -> Iterator[Item]:
    """The images a DataLoader yields, batches split into images, for the wanted ``entries`` (by position)."""
    wanted = {index: (path, name) for index, path, name in entries}
    last = max(wanted) if wanted else -1
    position = 0
    for value in loader:
        for single in unbatch(value):
            if position in wanted:
                path, name = wanted[position]
                yield item_of(single, position, Path(path), name, prepare)
            position += 1
            if position > last and entries:
                return


def unbatch(value: Any) -> Sequence[Any]:
    """A DataLoader's output as single items: a (N, C, H, W) tensor, ``[images, targets]``, a list of images, or one image."""
    if isinstance(value, torch.Tensor):
        return list(value) if value.dim() == 4 else [value]
    if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], torch.Tensor) and value[0].dim() == 4:
        images, targets = value
        targets = (
            list(targets) if isinstance(targets, (torch.Tensor, list, tuple)) and len(targets) == len(images) else [None] * len(images)
        )
        return [(image, target) if target is not None else image for image, target in zip(images, targets)]
    if isinstance(value, (list, tuple)) and value and all(_is_image(v) for v in value):
        return list(value)
    if isinstance(value, list) and value and all(isinstance(v, (tuple, list)) and len(v) == 2 and _is_image(v[0]) for v in value):
        return value  # a collate_fn that keeps the pairs
    return [value]


def unbounded_items(loader: DataLoader, prepare: Prepare) -> Iterator[Item]:
    """Every image a DataLoader of unknown length yields (in memory only), named by position."""
    position = 0
    for value in loader:
        for single in unbatch(value):
            path = Path(f"{DATASET_ROOT}/{position:06d}")
            yield item_of(single, position, path, path.name, prepare)
            position += 1
