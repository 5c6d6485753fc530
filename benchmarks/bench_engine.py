"""NormGrad at every Conv2d of ResNet-50 against the floor and a per-layer loop.

* floor: one forward + ``torch.autograd.grad`` with respect to the same
  activations, nothing else — what any one-pass method must pay;
* normgrad: ``ng.normgrad(model, x, layers=nn.Conv2d)`` (53 layers);
* per-layer loop: one forward/backward per layer, as TorchRay does.

Ratios are measured in one process, interleaved, on ResNet-50 at 224²
(random weights: speed does not depend on them).  Usage:
``python benchmarks/bench_engine.py [--batches 1 8] [--repeats 5]``.
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
from measure import interleaved, machine, median_seconds, peak_bytes  # noqa: E402

FLOOR = "floor (forward + autograd.grad)"


def floor(model: nn.Module, x: torch.Tensor, layers: list[str]):
    """One forward + autograd.grad with respect to the chosen activations."""
    modules = dict(model.named_modules())
    outputs = []
    handles = [modules[name].register_forward_hook(lambda m, i, o: outputs.append(o)) for name in layers]
    try:
        with torch.enable_grad():
            logits = model(x.requires_grad_(False))
            score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
            return torch.autograd.grad(score, outputs)
    finally:
        for handle in handles:
            handle.remove()


def per_layer_loop(model: nn.Module, x: torch.Tensor, layers: list[str]):
    return {name: ng.normgrad(model, x, layers=[name])[name] for name in layers}


def bench_batch(model: nn.Module, x: torch.Tensor, repeats: int, loop: bool) -> list[tuple]:
    """Rows (batch, method, seconds, time ratio, MiB, memory ratio) for one input batch."""
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    stages = ["layer1", "layer2", "layer3", "layer4"]
    methods = {
        FLOOR: lambda: floor(model, x, convs),
        "NormGrad, 53 Conv2d": lambda: ng.normgrad(model, x, layers=nn.Conv2d),
        "NormGrad, own weights (layer), 53 Conv2d": lambda: ng.normgrad(model, x, layers=nn.Conv2d, extract="layer"),
        "NormGrad selective, 53 Conv2d": lambda: ng.normgrad_selective(model, x, layers=nn.Conv2d),
        "NormGrad, 4 stage outputs": lambda: ng.normgrad(model, x, layers=stages),
    }
    seconds = interleaved(methods, repeats)
    peaks = {name: peak_bytes(fn) for name, fn in methods.items()}
    if loop:
        name = "per-layer loop (TorchRay way), 53 passes"
        seconds[name] = median_seconds(lambda: per_layer_loop(model, x, convs), 1)
        peaks[name] = peak_bytes(lambda: per_layer_loop(model, x, convs[:3]))  # every pass peaks alike
    rows = []
    for name in seconds:
        row = (x.shape[0], name, seconds[name], seconds[name] / seconds[FLOOR], peaks[name] / 2**20, peaks[name] / peaks[FLOOR])
        print("batch {:2d}  {:45s} {:8.3f} s  {:6.2f}x   {:8.1f} MiB  {:5.2f}x".format(*row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--no-loop", action="store_true", help="skip the (slow) per-layer loop")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks-engine.md"))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size)
        rows += bench_batch(model, x, args.repeats, loop=not args.no_loop)

    table = ["| batch | method | time (s) | time / floor | peak memory (MiB) | memory / floor |", "|---:|---|---:|---:|---:|---:|"]
    table += [f"| {b} | {n} | {t:.3f} | {rt:.2f}× | {m:.0f} | {rm:.2f}× |" for b, n, t, rt, m, rm in rows]
    text = (
        f"# Engine benchmark: ResNet-50, {args.size}², CPU\n\n"
        f"Machine: {machine()}. Command: `python benchmarks/bench_engine.py`. "
        f"Median of {args.repeats} interleaved runs (the per-layer loop: one run); "
        "peak memory from the profiler's allocation events, above what was live before the call.\n\n" + "\n".join(table) + "\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
