"""The engine at batch 64 on an accelerator: ResNet-50 and ViT-B/16 at 224², all layers, against the floor.

For each model, interleaved in one process (medians of ``--repeats`` runs,
``torch.cuda.synchronize`` around each call):

=====================  ===========================================================
row                    what runs
=====================  ===========================================================
forward only           ``model(x)`` without gradients (for scale)
floor                  one forward + ``torch.autograd.grad`` with respect to the
                       same layers' outputs: what any one-pass method must pay
NormGrad               ``ng.normgrad(model, x, layers=...)`` (conv1x1 + norm)
NormGrad selective     ``ng.normgrad_selective`` (scaling + positive norm)
explain default        the measured default (normgrad.defaults) at its layers
=====================  ===========================================================

Layers: ResNet-50 every ``Conv2d`` (53), ViT-B/16 every block (12, tokens
with a class token).  Peak memory: ``torch.cuda.max_memory_allocated``
above what was allocated before the call (model and input excluded); on the
CPU, the profiler's allocation events (``measure.peak_bytes``).  Random
weights (speed does not depend on them).  Needs only torch, torchvision and
timm.

Usage: ``python benchmarks/bench_device.py [--device cuda] [--batch 64] [--out docs]``;
writes ``OUT/benchmarks-device-gpu.json`` (``-cpu``) and its section of ``OUT/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import normgrad as ng  # noqa: E402
from bench_engine import floor  # noqa: E402
from measure import machine, peak_bytes, synchronize, write_section  # noqa: E402
from normgrad.defaults import explain_defaults  # noqa: E402
from normgrad.models import Preprocess  # noqa: E402


def models() -> dict[str, tuple[nn.Module, list[str]]]:
    import timm
    import torchvision

    resnet = torchvision.models.resnet50()
    vit = timm.create_model("vit_base_patch16_224")
    return {
        "ResNet-50 (53 Conv2d)": (resnet, [name for name, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]),
        "ViT-B/16 (12 blocks)": (vit, [f"blocks.{i}" for i in range(12)]),
    }


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory the call allocates above what was live before it (its result included), MiB."""
    gc.collect()
    if device.type != "cuda":
        return peak_bytes(fn) / 2**20
    synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del result
    return peak / 2**20


def forward_only(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def bench_model(model: nn.Module, layers: list[str], x: torch.Tensor, repeats: int) -> list[dict]:
    """Rows of one model: each method's median seconds, peak MiB and ratios to the floor."""
    device = x.device
    defaults = explain_defaults(model, Preprocess())
    default_layers = list(defaults.layers)
    methods: dict[str, Callable[[], object]] = {
        "forward only": lambda: forward_only(model, x),
        "floor": lambda: floor(model, x, layers),
        "NormGrad": lambda: ng.normgrad(model, x, layers=layers),
        "NormGrad selective": lambda: ng.normgrad_selective(model, x, layers=layers),
        f"floor at the default's {len(default_layers)} layers": lambda: floor(model, x, default_layers),
        "explain default": lambda: defaults.method(model, x, None, layers=default_layers),
    }
    for fn in methods.values():  # warm-up (kernels, allocator)
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            times[name].append(seconds(fn, device))
    median = {name: statistics.median(t) for name, t in times.items()}
    peaks = {name: peak_mib(fn, device) for name, fn in methods.items()}
    rows = []
    for name in methods:
        at_default = name == "explain default" or name.startswith("floor at")
        reference = f"floor at the default's {len(default_layers)} layers" if at_default else "floor"
        rows.append(
            {
                "method": name,
                "seconds": median[name],
                "images_per_second": x.shape[0] / median[name],
                "time_ratio": median[name] / median[reference] if "floor" not in name and name != "forward only" else None,
                "peak_mib": peaks[name],
                "memory_ratio": peaks[name] / peaks[reference] if "floor" not in name and name != "forward only" else None,
                "layers": "" if name == "forward only" else len(default_layers if at_default else layers),
            }
        )
    return rows


def report(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"## The engine on {results['device']} (batch {args.batch}, 224²)",
        "",
        f"Machine: {results['machine']}; device {results['device']}. Command: `python benchmarks/bench_device.py --device "
        f"{args.device} --batch {args.batch}` (`make bench` runs it when CUDA is available). Medians of {args.repeats} "
        "interleaved runs after a warm-up, synchronised; peak memory above the model and the input. Random weights.",
        "",
    ]
    for model, rows in results["models"].items():
        lines += [
            f"**{model}**",
            "",
            "| method | layers | time (ms) | images/s | time / floor | peak memory (MiB) | memory / floor |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            ratio = f"{r['time_ratio']:.2f}×" if r["time_ratio"] is not None else ""
            memory = f"{r['memory_ratio']:.2f}×" if r["memory_ratio"] is not None else ""
            lines.append(
                f"| {r['method']} | {r['layers']} | {1000 * r['seconds']:.1f} | {r['images_per_second']:.0f} | {ratio} | "
                f"{r['peak_mib']:.0f} | {memory} |"
            )
        lines.append("")
    lines.append("The explain default is compared with the floor at its own layers; the other rows with the floor at all layers.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    results: dict = {"machine": machine(), "device": name, "batch": args.batch, "models": {}}
    for label, (model, layers) in models().items():
        model = model.eval().to(device)
        x = torch.randn(args.batch, 3, 224, 224, device=device)
        print(f"{label} ...", flush=True)
        results["models"][label] = bench_model(model, layers, x, args.repeats)
        del model, x
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    text = report(results, args)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "gpu" if device.type == "cuda" else "cpu"
    (args.out / f"benchmarks-device-{suffix}.json").write_text(json.dumps(results, indent=1) + "\n")
    write_section(args.out / "benchmarks.md", f"device-{suffix}", text)
    print(text)


if __name__ == "__main__":
    main()
