"""Fashion-MNIST (Xiao et al. 2017) from local IDX files, as Debian's ``dataset-fashion-mnist`` installs them.

Nothing is downloaded: ``make data`` (``apt-get install dataset-fashion-mnist``)
puts the four files in ``/usr/share/datasets/fashion-mnist``; any folder
holding them (gzipped or not) works with ``root=`` or ``$NORMGRAD_FASHION_MNIST``.

The IDX format (LeCun et al.), big-endian throughout:

==========  ==========================================================
bytes       content
==========  ==========================================================
0-1         0x00 0x00
2           element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
            0x0D float32, 0x0E float64
3           number of dimensions ``d``
4 … 4+4d    each dimension, uint32
then        ``Π dims`` elements, row-major
==========  ==========================================================
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from normgrad.errors import NormGradError

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENVIRONMENT_VARIABLE = "NORMGRAD_FASHION_MNIST"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
INSTALL_HINT = (
    "install them with `make data` (Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist, into /usr/share/datasets/fashion-mnist), "
    f"or point --data / ${ENVIRONMENT_VARIABLE} at a folder holding the four IDX files "
    "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; .gz or not)"
)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (``.gz`` files are decompressed); every inconsistency is an error."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise NormGradError(f"cannot read IDX file {path}: {error}") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise NormGradError(f"{path} is not an IDX file (its first bytes are {data[:4].hex()}, expected 0000 then a type code and a rank)")
    dtype, rank = np.dtype(_IDX_TYPES[data[2]]), data[3]
    header = 4 + 4 * rank
    if len(data) < header:
        raise NormGradError(f"{path}: truncated IDX header ({len(data)} bytes for {rank} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=rank, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise NormGradError(
            f"{path}: IDX header says shape {shape} of {dtype} ({expected} bytes in all) but the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped when the name ends in ``.gz``): test fixtures and exports."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    dtype = np.dtype(array.dtype).newbyteorder("=")
    if dtype not in codes:
        raise NormGradError(f"IDX cannot store {array.dtype}; valid: uint8, int8, int16, int32, float32, float64")
    header = bytes([0, 0, codes[dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_IDX_TYPES[codes[dtype]]).tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(payload)


@dataclass(frozen=True)
class Split:
    """One split: ``images`` uint8 (N, 28, 28), ``labels`` int64 (N,)."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)


def find_root(root: str | Path | None = None) -> Path:
    """The folder holding the IDX files: ``root``, else ``$NORMGRAD_FASHION_MNIST``, else Debian's."""
    candidates = [Path(root)] if root else [Path(os.environ[ENVIRONMENT_VARIABLE])] if os.environ.get(ENVIRONMENT_VARIABLE) else []
    candidates = candidates or [DEBIAN_ROOT]
    for folder in candidates:
        if all(_file(folder, name) for names in FILES.values() for name in names):
            return folder
    missing = [name for names in FILES.values() for name in names if not _file(candidates[0], name)]
    raise NormGradError(f"Fashion-MNIST is not in {candidates[0]} (missing {', '.join(missing)}): {INSTALL_HINT}")


def _file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_split(split: str, root: str | Path | None = None) -> Split:
    """The ``"train"`` (60 000) or ``"test"`` (10 000) split, checked for shape and label range."""
    if split not in FILES:
        raise NormGradError(f"unknown split {split!r}; valid: {', '.join(FILES)}")
    folder = find_root(root)
    image_file, label_file = (_file(folder, name) for name in FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != len(labels):
        raise NormGradError(
            f"{image_file} / {label_file}: expected uint8 images (N, H, W) and N labels; got {images.dtype} {images.shape}, {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise NormGradError(f"{label_file}: labels must lie in 0..{len(CLASSES) - 1}; got {labels.min()}..{labels.max()}")
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
