"""Meta-saliency cost against the plain method, ResNet-50 at 224², CPU.

* meta (per-sample) / plain NormGrad, batch 1 and 8 — goal ≤ 3× at batch 1;
* per-sample meta on a batch of 8 / 8 single-image meta calls — goal ≤ 1×
  (the default loop on CPU, and ``vectorize=True``: ``torch.func.vmap``);
* shared-step meta (one minibatch step) / plain.

Usage: ``python benchmarks/bench_meta.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
import normgrad as ng  # noqa: E402
from measure import interleaved, machine, peak_bytes  # noqa: E402

LAYERS = ["layer1", "layer2", "layer3", "layer4"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks-meta.md"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    rows = []
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224)
        methods = {
            "plain NormGrad": lambda x=x: ng.normgrad(model, x, layers=LAYERS),
            "meta NormGrad, per-sample steps": lambda x=x: ng.meta_saliency(model, x, layers=LAYERS),
            "meta NormGrad, shared step": lambda x=x: ng.meta_saliency(model, x, per_sample=False, layers=LAYERS),
        }
        if batch > 1:
            methods["meta NormGrad, per-sample, vmap"] = lambda x=x: ng.meta_saliency(model, x, vectorize=True, layers=LAYERS)
        if batch > 1:
            methods["meta NormGrad, one call per image"] = lambda x=x: [
                ng.meta_saliency(model, x[i : i + 1], layers=LAYERS) for i in range(len(x))
            ]
        seconds = interleaved(methods, args.repeats)
        peaks = {name: peak_bytes(fn) for name, fn in methods.items()}
        for name in methods:
            row = (batch, name, seconds[name], seconds[name] / seconds["plain NormGrad"], peaks[name] / 2**20)
            rows.append(row)
            print("batch {:d}  {:38s} {:7.3f} s  {:5.2f}x plain  {:7.0f} MiB".format(*row), flush=True)
        if batch > 1:
            ratio = seconds["meta NormGrad, per-sample steps"] / seconds["meta NormGrad, one call per image"]
            print(f"batch {batch}: per-sample meta on the batch / {batch} single calls = {ratio:.2f}x")
            rows.append((batch, f"per-sample batch / {batch} single calls", ratio, ratio, float("nan")))
    table = ["| batch | method | time (s) | time / plain | peak memory (MiB) |", "|---:|---|---:|---:|---:|"]
    table += [f"| {b} | {n} | {t:.3f} | {r:.2f}× | {m:.0f} |" for b, n, t, r, m in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# Meta-saliency benchmark: ResNet-50, 224², CPU\n\nMachine: {machine()}. Command: `python benchmarks/bench_meta.py`. "
        f"Layers {LAYERS}; median of {args.repeats} interleaved runs.\n\n" + "\n".join(table) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
