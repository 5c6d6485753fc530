"""The benchmark suite: NormGrad against what users would pick instead, and how its cost grows.

Every comparison runs in this one process, interleaved, and is reported as a
ratio; peak memory comes from the profiler's allocation events.

1. NormGrad at 1, 4 (stage outputs) and all Conv2d layers vs the floor
   (forward + ``autograd.grad`` to the same activations), ResNet-50;
2. vs materialising the outer products (the CVPR reference code's way):
   ``conv1x1`` at the 4 stages, ``conv3x3`` at one layer;
3. vs Captum ``LayerGradCam`` called per layer, and pytorch-grad-cam
   ``LayerCAM`` on the same 4 layers;
4. scaling: batch 1 → 32, image side 224 → 896, layers 1 → all;
5. models: ResNet-50, VGG16, EfficientNet-Lite0, a timm ViT;
6. peak memory per image at batch 32.

Writes ``docs/benchmarks.md`` and ``docs/benchmarks.png``.  ``--quick`` for a
short smoke run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import normgrad as ng  # noqa: E402
from bench_engine import floor  # noqa: E402
from measure import interleaved, machine, peak_bytes  # noqa: E402

STAGES = ["layer1", "layer2", "layer3", "layer4"]


def materialised_outer_products(model: nn.Module, x: torch.Tensor, layers: list[str], extract: str) -> dict[str, torch.Tensor]:
    """The reference way: build every per-location contribution g_u P_u(a)ᵀ explicitly, then take its norm."""
    modules = dict(model.named_modules())
    outputs: list[torch.Tensor] = []
    handles = [modules[name].register_forward_hook(lambda m, i, o: outputs.append(o)) for name in layers]
    try:
        logits = model(x)
        grads = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), outputs)
    finally:
        for handle in handles:
            handle.remove()
    maps = {}
    for name, a, g in zip(layers, outputs, grads):
        a = a.detach()
        n, c, h, w = a.shape
        patches = a if extract == "conv1x1" else torch.nn.functional.unfold(a, 3, padding=1).view(n, c * 9, h, w)
        outer = torch.einsum("nchw,ndhw->nhwcd", g, patches)  # (N, h, w, C, C·k²): the outer products
        maps[name] = outer.flatten(3).norm(dim=3)[:, None]
    return maps


def gradcam_per_layer(model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict:
    return ng.baselines.gradcam(model, x, None, layers=layers)


def layercam(model: nn.Module, x: torch.Tensor, layers: list[str]):
    from pytorch_grad_cam import LayerCAM

    modules = dict(model.named_modules())
    with LayerCAM(model=model, target_layers=[modules[name] for name in layers]) as cam:
        return cam(input_tensor=x, targets=None)  # None: the highest-scoring class, as NormGrad here


def comparisons(model: nn.Module, repeats: int) -> list[tuple]:
    rows = []
    x = torch.randn(1, 3, 224, 224)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for label, layers, selector in (
        ("1 layer (layer3)", ["layer3"], ["layer3"]),
        ("4 stage outputs", STAGES, STAGES),
        ("all 53 Conv2d", convs, nn.Conv2d),
    ):
        methods = {
            "floor": lambda layers=layers: floor(model, x, layers),
            "NormGrad": lambda selector=selector: ng.normgrad(model, x, layers=selector),
        }
        seconds = interleaved(methods, repeats)
        peaks = {name: peak_bytes(fn) for name, fn in methods.items()}
        rows.append(
            (f"NormGrad, {label}", "floor", seconds["NormGrad"] / seconds["floor"], peaks["NormGrad"] / peaks["floor"], seconds["NormGrad"])
        )
    # against other tools, on the 4 stage outputs
    methods = {
        "NormGrad": lambda: ng.normgrad(model, x, layers=STAGES),
        "Captum LayerGradCam, per layer": lambda: gradcam_per_layer(model, x, STAGES),
        "pytorch-grad-cam LayerCAM": lambda: layercam(model, x, STAGES),
        "materialised outer products (conv1x1)": lambda: materialised_outer_products(model, x, STAGES, "conv1x1"),
        "NormGrad conv3x3, layer1.0.conv1": lambda: ng.saliency(model, x, layers=["layer1.0.conv1"], extract="conv3x3"),
        "materialised outer products (conv3x3), layer1.0.conv1": lambda: materialised_outer_products(
            model, x, ["layer1.0.conv1"], "conv3x3"
        ),
    }
    seconds = interleaved(methods, repeats)
    peaks = {name: peak_bytes(fn) for name, fn in methods.items()}
    for name in list(methods)[1:4]:
        rows.append((name, "NormGrad, 4 stages", seconds[name] / seconds["NormGrad"], peaks[name] / peaks["NormGrad"], seconds[name]))
    rows.append(
        (
            "materialised outer products (conv3x3), layer1.0.conv1",
            "NormGrad conv3x3, same layer",
            seconds["materialised outer products (conv3x3), layer1.0.conv1"] / seconds["NormGrad conv3x3, layer1.0.conv1"],
            peaks["materialised outer products (conv3x3), layer1.0.conv1"] / peaks["NormGrad conv3x3, layer1.0.conv1"],
            seconds["materialised outer products (conv3x3), layer1.0.conv1"],
        )
    )
    memory = [peaks[name] / 2**20 for name in ("NormGrad", "materialised outer products (conv1x1)")]
    memory.append(peaks["materialised outer products (conv3x3), layer1.0.conv1"] / 2**20)
    rows.append(("peak MiB: NormGrad 4 stages, conv1x1 materialised, conv3x3 materialised (one layer)", "", *memory))
    return rows


def scaling(model: nn.Module, repeats: int, quick: bool) -> dict[str, list[tuple]]:
    curves: dict[str, list[tuple]] = {"batch": [], "side": [], "layers": []}
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for batch in (1, 4) if quick else (1, 2, 4, 8, 16, 32):
        x = torch.randn(batch, 3, 224, 224)
        s = interleaved({"floor": lambda x=x: floor(model, x, convs), "ng": lambda x=x: ng.normgrad(model, x, layers=nn.Conv2d)}, repeats)
        curves["batch"].append((batch, s["ng"], s["ng"] / s["floor"]))
    for side in (224, 448) if quick else (224, 448, 672, 896):
        x = torch.randn(1, 3, side, side)
        s = interleaved({"floor": lambda x=x: floor(model, x, convs), "ng": lambda x=x: ng.normgrad(model, x, layers=nn.Conv2d)}, repeats)
        curves["side"].append((side, s["ng"], s["ng"] / s["floor"]))
    x = torch.randn(1, 3, 224, 224)
    for count in (1, 4, 16, 53):
        layers = convs[-count:]
        s = interleaved(
            {"floor": lambda layers=layers: floor(model, x, layers), "ng": lambda layers=layers: ng.normgrad(model, x, layers=layers)},
            repeats,
        )
        curves["layers"].append((count, s["ng"], s["ng"] / s["floor"]))
    return curves


def models_table(repeats: int) -> list[tuple]:
    import timm

    rows = []
    candidates = {
        "ResNet-50 (53 Conv2d)": (torchvision.models.resnet50(), nn.Conv2d),
        "VGG16 (13 Conv2d)": (torchvision.models.vgg16(), nn.Conv2d),
        "EfficientNet-Lite0 (49 Conv2d, depthwise)": (ng.models.load("efficientnet_lite0").model, nn.Conv2d),
        "ViT-Ti/16 (12 blocks, tokens + class token)": (timm.create_model("vit_tiny_patch16_224"), [f"blocks.{i}" for i in range(12)]),
    }
    x = torch.randn(1, 3, 224, 224)
    for label, (model, selector) in candidates.items():
        model.eval()
        names = [name for name, _ in ng.select_layers(model, selector)]
        s = interleaved(
            {"floor": lambda m=model, n=names: floor(m, x, n), "ng": lambda m=model, sel=selector: ng.normgrad(m, x, layers=sel)}, repeats
        )
        rows.append((label, s["ng"], s["ng"] / s["floor"]))
    return rows


def per_image_memory() -> float:
    model = torchvision.models.resnet50().eval()
    x = torch.randn(32, 3, 224, 224)
    return peak_bytes(lambda: ng.normgrad(model, x, layers=STAGES)) / 32 / 2**20


def plot(curves: dict[str, list[tuple]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (key, label) in zip(
        axes, (("batch", "batch size (224²)"), ("side", "image side (batch 1)"), ("layers", "layers hooked (batch 1)"))
    ):
        xs = [p[0] for p in curves[key]]
        ax.plot(xs, [p[2] for p in curves[key]], marker="o", label="NormGrad / floor")
        ax.axhline(1.15, color="grey", linestyle="--", linewidth=1, label="goal 1.15×")
        ax.set_xlabel(label)
        ax.set_ylim(0.8, 1.5)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(v) for v in xs])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("time ratio to the floor")
    axes[0].legend(fontsize=8)
    fig.suptitle("NormGrad at every Conv2d of ResNet-50: cost relative to forward + autograd.grad", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    print("comparisons ...", flush=True)
    compare_rows = comparisons(model, args.repeats)
    print("scaling ...", flush=True)
    curves = scaling(model, args.repeats, args.quick)
    print("models ...", flush=True)
    model_rows = models_table(args.repeats)
    memory = per_image_memory()
    args.out.mkdir(parents=True, exist_ok=True)
    plot(curves, args.out / "benchmarks.png")
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {machine()}; CPU (the accelerator tables: bench_device.py, in their own section below). "
        "Command: `python benchmarks/bench_suite.py` "
        f"(`make bench`). Interleaved medians of {args.repeats} runs in one process; peak memory from the profiler's allocation events. "
        "Engine details: [benchmarks-engine.md](benchmarks-engine.md); meta-saliency: [benchmarks-meta.md](benchmarks-meta.md).",
        "",
        "## Against the floor and other tools (ResNet-50, 224², batch 1)",
        "",
        "| method | relative to | time ratio | memory ratio | time (s) |",
        "|---|---|---:|---:|---:|",
    ]
    for name, base, rt, rm, t in compare_rows[:-1]:
        lines.append(f"| {name} | {base} | {rt:.2f}× | {rm:.2f}× | {t:.3f} |")
    _, _, a, b, c = compare_rows[-1]
    lines += [
        "",
        f"Peak memory: NormGrad at the 4 stages {a:.0f} MiB; materialised `conv1x1` outer products at the same 4 layers {b:.0f} MiB; "
        f"materialised `conv3x3` at the single layer `layer1.0.conv1` {c:.0f} MiB (at `layer2.0` it would be C·9C·h·w = "
        "512·4608·28·28 floats ≈ 7 GiB per image, as METHOD.md says).",
        "",
        "## How the cost grows (NormGrad at all 53 Conv2d vs the floor)",
        "",
        "![scaling](benchmarks.png)",
        "",
        "| curve | x | NormGrad time (s) | ratio to floor |",
        "|---|---:|---:|---:|",
    ]
    for key, points in curves.items():
        for x_value, seconds, ratio in points:
            lines.append(f"| {key} | {x_value} | {seconds:.3f} | {ratio:.2f}× |")
    lines += [
        "",
        "## Models (batch 1, 224², NormGrad at every listed layer vs the floor)",
        "",
        "| model | time (s) | ratio to floor |",
        "|---|---:|---:|",
    ]
    lines += [f"| {label} | {t:.3f} | {r:.2f}× |" for label, t, r in model_rows]
    lines += ["", f"Peak memory per image at batch 32 (ResNet-50, NormGrad at the 4 stages): {memory:.0f} MiB.", ""]
    (args.out / "benchmarks.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
