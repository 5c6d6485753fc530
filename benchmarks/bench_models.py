"""NormGrad on every supported family against the floor: default layers, all Conv2d, and the explain default.

* floor: one forward + ``torch.autograd.grad`` with respect to the same
  activations (``bench_engine.floor``) — what any one-pass method must pay;
* NormGrad (``conv1x1`` + ``norm``) at the default layers
  (:func:`normgrad.engine.default_layers.auto_layers`) and at every ``Conv2d`` of
  the convolutional families;
* the explain default (:func:`normgrad.defaults.explain_defaults`: selective
  at one layer, ``scaling+sum`` at two, one pass) at its own layers.

Each ratio is measured in one process, the method and its floor interleaved
(random weights, except the embedded EfficientNet-Lite0: speed does not
depend on them).  Usage: ``python benchmarks/bench_models.py [--batches 1 8]
[--repeats 7] [--models efficientnet_lite0 ...] [--profile MODEL]``.
Writes ``docs/benchmarks-models.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import normgrad as ng  # noqa: E402
from bench_engine import floor  # noqa: E402
from measure import interleaved, machine, peak_bytes, write_section  # noqa: E402
from normgrad.defaults import explain_defaults  # noqa: E402
from normgrad.engine.default_layers import auto_layers  # noqa: E402
from normgrad.models import Preprocess  # noqa: E402

TITLE = """# Models benchmark: NormGrad vs the floor on every supported family, 224², CPU

Written by `benchmarks/bench_models.py`: the time and peak memory of NormGrad
(`conv1x1` + `norm`) at each model's default layers and at every `Conv2d`,
and of the explain default at its layers, each divided by the floor on the
same layers (one forward + `torch.autograd.grad` to their outputs).  One
thread (`--threads 1`): on a shared machine, two OpenMP threads competing
with other work for two cores make small kernels wait on each other, and
the ratios meaningless.
"""

MODELS: dict[str, tuple[str, Callable[[], nn.Module], bool]] = {  # key: (label, build, has Conv2d layers worth a row)
    "efficientnet_lite0": ("EfficientNet-Lite0 (timm, embedded weights)", lambda: ng.models.load("efficientnet_lite0").model, True),
    "mobilenet_v3_large": ("MobileNetV3-Large (torchvision)", lambda: torchvision.models.mobilenet_v3_large(), True),
    "vit_tiny": ("ViT-Ti/16 (timm)", lambda: timm.create_model("vit_tiny_patch16_224"), False),
    "swin_t": ("Swin-T (torchvision)", lambda: torchvision.models.swin_t(), False),
    "convnext_atto": ("ConvNeXt-Atto (timm)", lambda: timm.create_model("convnext_atto"), True),
    "resnet50": ("ResNet-50 (torchvision, reference)", lambda: torchvision.models.resnet50(), True),
}


def workloads(model: nn.Module, with_convs: bool) -> dict[str, tuple[list[str], Callable]]:
    """``{label: (layers, fn(x))}``: NormGrad at the default layers (and all Conv2d), the explain default at its layers."""
    example = torch.zeros(1, 3, 224, 224)
    default = auto_layers(model, example)
    work = {f"NormGrad, default layers ({len(default)})": (default, lambda x: ng.normgrad(model, x, layers=default))}
    if with_convs:
        convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
        work[f"NormGrad, all Conv2d ({len(convs)})"] = (convs, lambda x: ng.normgrad(model, x, layers=nn.Conv2d))
    defaults = explain_defaults(model, Preprocess())
    layers = list(defaults.layers)
    method = defaults.method
    work[f"explain default ({', '.join(layers)})"] = (layers, lambda x: method(model, x, None, layers=layers))
    return work


def bench_model(key: str, batches: list[int], repeats: int) -> list[tuple]:
    label, build, with_convs = MODELS[key]
    torch.manual_seed(0)
    model = build().eval()
    rows = []
    for layers_label, (layers, fn) in workloads(model, with_convs).items():
        for batch in batches:
            x = torch.randn(batch, 3, 224, 224)
            methods = {"floor": lambda n=layers, x=x: floor(model, x, n), "normgrad": lambda f=fn, x=x: f(x)}
            seconds = interleaved(methods, repeats)
            peaks = {name: peak_bytes(f) for name, f in methods.items()}
            row = (label, layers_label, batch, seconds["floor"], seconds["normgrad"], peaks["normgrad"] / peaks["floor"])
            print("{:45s} {:55s} batch {:2d}  floor {:7.3f} s  normgrad {:7.3f} s  {:5.2f}x time  {:5.2f}x memory".format(
                *row[:5], row[4] / row[3], row[5]), flush=True)  # fmt: skip
            rows.append(row)
    return rows


def profile(key: str, batch: int, what: str, top: int) -> None:
    """Per-op self CPU time of NormGrad (``what`` = a workload label prefix) and of its floor."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    label, build, with_convs = MODELS[key]
    model = build().eval()
    work = workloads(model, with_convs)
    layers, fn = next(v for k, v in work.items() if k.startswith(what))
    x = torch.randn(batch, 3, 224, 224)
    for name, call in (("floor", lambda: floor(model, x, layers)), ("normgrad", lambda: fn(x))):
        for _ in range(3):
            call()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                call()
        print(f"\n== {label}, {what}, batch {batch}: {name} (5 calls)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--profile", choices=list(MODELS), help="print a per-op profile of one model instead")
    parser.add_argument("--what", default="NormGrad, all Conv2d", help="with --profile: the workload (label prefix)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--threads", type=int, help="torch threads (1 keeps ratios stable on a shared machine: no OpenMP spin-waits)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks-models.md"))
    parser.add_argument("--section", default="current", help="the section of --out to write (others are kept: e.g. a run of older code)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        profile(args.profile, args.batches[0], args.what, args.top)
        return

    load_before = os.getloadavg()
    rows = [row for key in args.models for row in bench_model(key, args.batches, args.repeats)]
    load_after = os.getloadavg()
    table = [
        "| model | layers | batch | floor (s) | NormGrad (s) | time / floor | peak memory / floor |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    table += [f"| {m} | {w} | {b} | {f:.3f} | {t:.3f} | {t / f:.2f}× | {r:.2f}× |" for m, w, b, f, t, r in rows]
    cores = os.cpu_count()
    text = (
        f"## {args.section}\n\n"
        f"Machine: {machine()}. Command: `python benchmarks/bench_models.py --batches {' '.join(map(str, args.batches))} "
        f"--repeats {args.repeats}{f' --threads {args.threads}' if args.threads else ''} --section {shlex.quote(args.section)}`. "
        f"Median of {args.repeats} runs, each method interleaved with its floor (one forward + `autograd.grad` to the same "
        "layers' outputs); peak memory from the profiler's allocation events. "
        f"Load average (1, 5, 15 min) on {cores} CPUs: {', '.join(f'{v:.1f}' for v in load_before)} before, "
        f"{', '.join(f'{v:.1f}' for v in load_after)} after.\n\n" + "\n".join(table) + "\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.out.exists():
        args.out.write_text(TITLE)
    write_section(args.out, f"bench_models {args.section}", text)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
