"""Pointing-game datasets from local folders (nothing is downloaded).

* PASCAL VOC 2007 ``test``: ``ROOT/VOCdevkit/VOC2007`` (or ``ROOT`` itself) with
  ``ImageSets/Main/test.txt``, ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``.
  A class's ground truth is the union of its boxes (1-based, inclusive
  coordinates, difficult boxes included); a class whose boxes are all
  ``difficult`` is skipped.
* COCO 2014 ``val``: ``ROOT/annotations/instances_val2014.json`` and
  ``ROOT/val2014/``; a class's ground truth is the union of its instance
  masks (polygons and RLE, via pycocotools).  Classes are indexed 0..79 in
  the order of their category ids.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from normgrad.errors import NormGradError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@dataclass
class AnnotatedImage:
    """One image with its per-class ground truth."""

    image_id: str
    path: Path
    width: int
    height: int
    boxes: dict[int, list[tuple[int, int, int, int]]] = field(default_factory=dict)  # class -> 0-based inclusive (x0, y0, x1, y1)
    segmentations: dict[int, list[Any]] = field(default_factory=dict)  # class -> COCO segmentations
    skipped: set[int] = field(default_factory=set)  # classes whose boxes are all difficult

    @property
    def classes(self) -> list[int]:
        """The classes evaluated on this image, in index order."""
        present = set(self.boxes) | set(self.segmentations)
        return sorted(present - self.skipped)

    def mask(self, cls: int) -> np.ndarray:
        """The (H, W) boolean ground truth of a class: union of its boxes or instance masks."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        for x0, y0, x1, y1 in self.boxes.get(cls, []):
            mask[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
        if self.segmentations.get(cls):
            from pycocotools import mask as coco_mask

            for segmentation in self.segmentations[cls]:
                if isinstance(segmentation, list):  # polygons
                    rles = coco_mask.frPyObjects(segmentation, self.height, self.width)
                    rle = coco_mask.merge(rles)
                elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
                    rle = coco_mask.frPyObjects(segmentation, self.height, self.width)
                else:
                    rle = segmentation
                mask |= coco_mask.decode(rle).astype(bool)
        return mask

    def is_difficult(self, cls: int) -> bool:
        """The paper's definition: the class covers < 1/4 of the image and another class is present."""
        others = (set(self.boxes) | set(self.segmentations)) - {cls}
        return bool(others) and self.mask(cls).mean() < 0.25


class PointingDataset:
    """Images with per-class ground truth: ``ids``, ``class_names`` and ``load(image_id)``."""

    ids: list[str]
    class_names: tuple[str, ...]

    def load(self, image_id: str) -> AnnotatedImage:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[AnnotatedImage]:
        for image_id in self.ids:
            yield self.load(image_id)


class VOC2007(PointingDataset):
    """PASCAL VOC 2007 in its standard on-disk layout."""

    name = "voc07"
    class_names = VOC_CLASSES

    def __init__(self, root: str | Path, split: str = "test") -> None:
        root = Path(root)
        candidates = [root / "VOCdevkit" / "VOC2007", root / "VOC2007", root]
        self.root = next((c for c in candidates if (c / "Annotations").is_dir()), None)
        if self.root is None:
            raise NormGradError(f"no VOC 2007 folder under {str(root)!r}: expected VOCdevkit/VOC2007/Annotations (or Annotations) there")
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise NormGradError(f"missing {split_file}: the list of {split} images")
        self.ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]

    def load(self, image_id: str) -> AnnotatedImage:
        path = self.root / "Annotations" / f"{image_id}.xml"
        try:
            tree = ElementTree.parse(path).getroot()
        except (OSError, ElementTree.ParseError) as error:
            raise NormGradError(f"cannot read VOC annotation {path}: {error}") from error
        size = tree.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        image = AnnotatedImage(image_id, self.root / "JPEGImages" / f"{image_id}.jpg", width, height)
        difficult_only: dict[int, bool] = {}
        for obj in tree.iter("object"):
            name = obj.findtext("name").strip()
            if name not in VOC_CLASSES:
                raise NormGradError(f"{path}: unknown VOC class {name!r}")
            cls = VOC_CLASSES.index(name)
            box = obj.find("bndbox")
            x0, y0, x1, y1 = (int(float(box.findtext(k))) - 1 for k in ("xmin", "ymin", "xmax", "ymax"))  # 1-based inclusive
            image.boxes.setdefault(cls, []).append((x0, y0, x1, y1))
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            difficult_only[cls] = difficult_only.get(cls, True) and difficult
        image.skipped = {cls for cls, only in difficult_only.items() if only}
        return image


class COCO2014(PointingDataset):
    """COCO 2014 ``val`` with its instances JSON."""

    name = "coco14"

    def __init__(self, root: str | Path, split: str = "val2014") -> None:
        root = Path(root)
        annotations = root / "annotations" / f"instances_{split}.json"
        if not annotations.is_file():
            raise NormGradError(f"missing {annotations}: the COCO instances file")
        data = json.loads(annotations.read_text())
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.class_names = tuple(c["name"] for c in categories)
        index = {c["id"]: i for i, c in enumerate(categories)}
        self.images = {img["id"]: img for img in sorted(data["images"], key=lambda i: i["id"])}
        self.annotations: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            self.annotations.setdefault(ann["image_id"], []).append({**ann, "class": index[ann["category_id"]]})
        self.image_folder = root / split
        self.ids = [str(i) for i in self.images if i in self.annotations]

    def load(self, image_id: str) -> AnnotatedImage:
        info = self.images[int(image_id)]
        image = AnnotatedImage(image_id, self.image_folder / info["file_name"], int(info["width"]), int(info["height"]))
        for ann in self.annotations[int(image_id)]:
            image.segmentations.setdefault(ann["class"], []).append(ann["segmentation"])
        return image


def load_dataset(name: str, root: str | Path) -> VOC2007 | COCO2014:
    if name == "voc07":
        return VOC2007(root)
    if name == "coco14":
        return COCO2014(root)
    raise NormGradError(f"unknown dataset {name!r}; valid: voc07, coco14")


def read_difficult_flags(path: str | Path, num_classes: int) -> dict[str, list[int]]:
    """TorchRay's per-image flags: ``image id`` then one 0/1 per class, tab-separated."""
    flags = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.replace(",", "\t").split()
        if len(fields) != num_classes + 1 or any(f not in ("0", "1") for f in fields[1:]):
            raise NormGradError(f"{path}:{number}: expected an image id and {num_classes} flags (0/1)")
        flags[fields[0]] = [int(f) for f in fields[1:]]
    return flags
