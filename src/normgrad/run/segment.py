"""``--task segment``: one batch of a segmenter, explained inside a region of each image.

The target is a class ``c`` (``--target``).  The region of each image is
``--region x0,y0,x1,y1`` (the image's pixels, scaled to the model input:
``⌊x0·W/W₀⌋ … ⌈x1·W/W₀⌉``) or, without it, the pixels where the model
predicts ``c`` (an image where it predicts ``c`` nowhere is skipped with
that reason).  The maps explain ``J = Σ_{p∈region} ŝ_c(p)``
(:class:`normgrad.segmentation.Region`).  Each image also gets the output
``mask``: 1 where the model predicts ``c`` (at the photo's size, nearest),
which the gallery shows beside the map.  Its ``predictions`` are the
classes by the share of pixels predicted as each (``probability``: that
share), the target's likewise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from normgrad import pipeline
from normgrad.engine.model_state import eval_mode
from normgrad.run.loading import Item, to_device
from normgrad.run.plan import MASK
from normgrad.run.records import Explained
from normgrad.segmentation import Region, predicted_classes


def segment_batch(loop: Any, batch: list[Item]) -> list[tuple[Item, Explained | str]]:
    """Each item with its :class:`Explained` (maps, ``mask``, pixel shares), or why it was skipped."""
    setup, model, cls = loop.setup, loop.loaded.model, int(loop.setup.target)
    x = to_device([item.tensor for item in batch], loop.device)
    size = tuple(x.shape[-2:])
    with torch.no_grad(), eval_mode(model):
        predicted = predicted_classes(model(x), size).cpu()
    if setup.region is not None:
        masks = torch.stack([box_mask(setup.region, item.photo.size, size) for item in batch])
    else:
        masks = (predicted == cls).float()
    results: list[tuple[Item, Explained | str]] = []
    keep = [i for i in range(len(batch)) if bool(masks[i].any())]
    if setup.region is not None:
        why = f"the region {tuple(setup.region)} lies outside this image"
    else:
        why = f"the model predicts {loop.loaded.class_name(cls)!r} nowhere in this image; give --region x0,y0,x1,y1"
    results += [(batch[i], why) for i in range(len(batch)) if i not in keep]
    if not keep:
        return results
    region = Region(cls, mask=masks[keep].to(x.device))
    maps = pipeline.run_method(loop.method, model, x[keep], region, setup.layers) if loop.method.needs_model else None
    kept = [batch[i] for i in keep]
    classes = max(len(loop.loaded.class_names), int(predicted.max()) + 1)
    for k, item in enumerate(kept):
        planes = loop.at_image_size(item, {name: m[k : k + 1] for name, m in maps.items()} if maps is not None else None)
        if isinstance(planes, str):
            results.append((item, planes))
            continue
        shares = torch.bincount(predicted[keep[k]].flatten(), minlength=classes).double() / predicted[keep[k]].numel()
        width, height = item.photo.size
        mask = F.interpolate((predicted[keep[k]] == cls)[None, None].float(), size=(height, width), mode="nearest")[0, 0]
        planes[MASK] = mask.numpy().astype(np.float32)
        top = shares.topk(min(loop.top_k, classes))
        at = (int(size[1]), int(size[0]))
        results.append((item, Explained(
            index=item.index,
            name=item.name,
            image=str(item.path),
            size=tuple(item.photo.size),
            maps=planes,
            predictions=[pipeline.entry(int(c), float(p), loop.loaded.class_name) for p, c in zip(top.values, top.indices)],
            target=pipeline.entry(cls, float(shares[cls]), loop.loaded.class_name),
            predicted_at=at,
            explained_at=at,
            label=item.label,
            photo=item.photo,
        )))  # fmt: skip
    return results


def box_mask(box: tuple[int, int, int, int], photo_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The (H, W) 0/1 mask of a box given in the photo's pixels (``photo_size`` = (W₀, H₀)), on the model input's grid."""
    (x0, y0, x1, y1), (width, height), (rows, cols) = box, photo_size, size
    mask = torch.zeros(rows, cols)
    left, right = math.floor(min(x0, width) * cols / width), math.ceil(min(x1, width) * cols / width)
    top, bottom = math.floor(min(y0, height) * rows / height), math.ceil(min(y1, height) * rows / height)
    mask[top:bottom, left:right] = 1
    return mask


__all__ = ["box_mask", "segment_batch"]
