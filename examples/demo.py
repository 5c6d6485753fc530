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

from normgrad import images, models, pipeline, registry, viz

OUT = Path("normgrad-demo")


def main() -> None:
    torch.manual_seed(0)
    loaded = models.load("efficientnet_lite0")
    photo = images.from_array(skimage.data.chelsea())
    x = pipeline.prepare(photo, loaded.preprocess)[None]
    prediction = pipeline.predict(loaded.model, x)
    print("EfficientNet-Lite0 on skimage.data.chelsea():")
    for entry in prediction.top(0, 5, loaded.class_name):
        print(f"  {entry['class']:4d}  {entry['name']:20s} {entry['probability']:6.1%}")
    target = int(prediction.classes[0])
    layers = loaded.default_layers(x)
    print(f"explaining class {target} ({loaded.class_name(target)}) at layers {layers}")

    width, height = photo.size
    panels: dict[str, dict[str, torch.Tensor]] = {}
    OUT.mkdir(exist_ok=True)
    for method_name in ("normgrad", "selective"):
        method = registry.get_method(method_name)
        maps = pipeline.method_maps(method, loaded, x, target, layers, (height, width), "product", per_layer=True)
        combined = maps.pop(pipeline.COMBINED)
        for layer, saliency_map in maps.items():
            panels.setdefault(layer, {})[method.title] = saliency_map
        panels.setdefault("combined (product)", {})[method.title] = combined
        np.save(OUT / f"chelsea_{method_name}.npy", combined[0, 0].numpy().astype(np.float32))
        viz.overlay(photo, combined).save(OUT / f"chelsea_{method_name}.png")
        peak = np.unravel_index(int(combined.flatten().argmax()), (height, width))
        print(f"  {method.title:18s} combined map {tuple(combined.shape)}, peak at (row, col) = {tuple(int(v) for v in peak)}")
    viz.grid(photo, panels, title=f"{loaded.class_name(target)} — EfficientNet-Lite0", path=OUT / "chelsea_layers.png")
    print(f"wrote {OUT}/chelsea_normgrad.png, chelsea_selective.png, .npy maps and chelsea_layers.png")


if __name__ == "__main__":
    main()
