"""NormGrad on a real photo with the embedded pretrained EfficientNet-Lite0, offline.

Writes into ``normgrad-demo/``: per-layer and combined maps as overlays
(PNG, the photo's own pixel size), the combined maps as float32 ``.npy``,
and a figure with one row per layer.  Run with ``make demo``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
import torch

import normgrad as ng
from normgrad import images, models, viz

OUT = Path("normgrad-demo")


def main() -> None:
    torch.manual_seed(0)
    loaded = models.load("efficientnet_lite0")
    photo = images.from_array(skimage.data.chelsea())
    x = loaded.preprocess(photo)[None]
    probabilities = loaded.model(x).softmax(1)[0].detach()
    top = probabilities.topk(5)
    print("EfficientNet-Lite0 on skimage.data.chelsea():")
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"  {i:4d}  {loaded.class_name(i):20s} {p:6.1%}")
    target = int(top.indices[0])
    layers = loaded.default_layers(x)
    print(f"explaining class {target} ({loaded.class_name(target)}) at layers {layers}")

    methods = {"NormGrad": ng.normgrad, "selective": ng.normgrad_selective}
    width, height = photo.size
    panels: dict[str, dict[str, torch.Tensor]] = {}
    OUT.mkdir(exist_ok=True)
    for method_name, method in methods.items():
        maps = method(loaded.model, x, target, layers=layers)
        for layer, saliency_map in maps.items():
            panels.setdefault(layer, {})[method_name] = images.to_original_size(saliency_map, width, height)
        combined = ng.combine(maps, size=(height, width), mode="product")
        panels.setdefault("combined (product)", {})[method_name] = combined
        stem = method_name.lower()
        np.save(OUT / f"chelsea_{stem}.npy", combined[0, 0].numpy().astype(np.float32))
        viz.overlay(photo, combined).save(OUT / f"chelsea_{stem}.png")
        peak = np.unravel_index(int(combined.flatten().argmax()), (height, width))
        print(f"  {method_name:10s} combined map {tuple(combined.shape)}, peak at (row, col) = {tuple(int(v) for v in peak)}")
    viz.grid(photo, panels, title=f"{loaded.class_name(target)} — EfficientNet-Lite0", path=OUT / "chelsea_layers.png")
    print(f"wrote {OUT}/chelsea_normgrad.png, chelsea_selective.png, .npy maps and chelsea_layers.png")


if __name__ == "__main__":
    main()
