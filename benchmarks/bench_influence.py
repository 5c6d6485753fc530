"""Cost of pixel-level TracIn vs Captum's TracInCP: influence of N training images on T test images, time and peak memory.

Each method runs in its own fresh process (``spawn``), after the data, the
model and the checkpoints are loaded: the time is the wall clock of the call,
the peak memory the growth of the process's resident set over what was there
before (``VmHWM`` reset through ``/proc/self/clear_refs``).  Same layers,
same checkpoints, same batch size, same threads.

* normgrad: ``ng.influence`` — every pair's example-level score, then the
  pixel maps of each test image's top-k proponents and opponents;
* Captum: ``TracInCP(layers=...).influence`` — every pair's score (no maps).

Usage (the lead runs the full one in a quiet window; ``--train 2000`` checks it runs)::

    python benchmarks/bench_influence.py --train 60000 --test 100 --threads 2 --out docs
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

LAYERS = ["conv1", "conv2", "conv3"]


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _setup(train: int, test: int, checkpoints: int):
    import torch

    from normgrad.evaluation.training.cnn import FashionCNN, normalise
    from normgrad.evaluation.training.fashion_mnist import load_split

    train_split, test_split = load_split("train"), load_split("test")
    mean, std = 0.286, 0.353
    train_x, train_y = normalise(train_split.images[:train], mean, std), train_split.labels[:train]
    test_x, test_y = normalise(test_split.images[:test], mean, std), test_split.labels[:test]
    torch.manual_seed(0)
    model = FashionCNN().eval()
    states = []
    for _ in range(checkpoints):  # the cost does not depend on the weights' values
        states.append({k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()})
    return model, train_x, train_y, test_x, test_y, states


def _child(method: str, options: dict, queue) -> None:
    import torch

    torch.set_num_threads(options["threads"])
    model, train_x, train_y, test_x, test_y, states = _setup(options["train"], options["test"], options["checkpoints"])
    lrs = [0.01] * len(states)
    before = _rss_mib("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    if method == "normgrad":
        import normgrad as ng

        result = ng.influence(model, test_x, (train_x, train_y), test_labels=test_y, layers=LAYERS, extract="layer", checkpoints=states,
                              lr=lrs, top_k=options["top_k"], batch_size=options["batch_size"])  # fmt: skip
        scores = result.scores
    else:
        from captum.influence import TracInCP
        from torch import nn
        from torch.utils.data import TensorDataset

        def load(net, key):
            net.load_state_dict(states[key])
            return lrs[key]

        tracin = TracInCP(model, TensorDataset(train_x, train_y), list(range(len(states))), checkpoints_load_func=load, layers=LAYERS,
                          loss_fn=nn.CrossEntropyLoss(reduction="sum"), sample_wise_grads_per_batch=True,
                          batch_size=options["batch_size"])  # fmt: skip
        scores = tracin.influence((test_x, test_y))
    seconds = time.perf_counter() - start
    queue.put({"seconds": seconds, "peak_mib": _rss_mib("VmHWM") - before, "checksum": float(scores.double().abs().sum())})


def overhead(images: int, threads: int, repeats: int = 3) -> dict:
    """Seconds for ``images`` training images against one test image: a plain forward/backward of the batch loss, the
    per-example gradients with their scores (``TracIn.scores``), and the scores with the per-location maps (``TracIn.maps``)."""
    import statistics

    import torch
    import torch.nn.functional as F

    from normgrad.tracin import TracIn

    torch.set_num_threads(threads)
    model, train_x, train_y, test_x, test_y, _ = _setup(images, 1, 1)
    tracin = TracIn(model, LAYERS, extract="layer")
    tests = tracin.test_gradients(test_x, test_y)

    def plain():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(train_x), train_y).backward()
        model.zero_grad(set_to_none=True)

    timings = {}
    for name, call in (("forward_backward", plain), ("scores", lambda: tracin.scores(train_x, train_y, tests)),
                       ("maps", lambda: tracin.maps(train_x, train_y, tests))):  # fmt: skip
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            runs.append(time.perf_counter() - start)
        timings[name] = statistics.median(runs)
    return {"images": images, **timings, "maps_over_scores": timings["maps"] / timings["scores"]}


def measure(method: str, options: dict) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(method, options, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=60_000)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overhead", action="store_true", help="only time one test image's maps against plain gradients")
    parser.add_argument(
        "--out", type=Path, default=None, help="write influence-cost.json here (and refresh influence.md if influence.json is there)"
    )
    args = parser.parse_args(argv)
    if args.overhead:
        print(json.dumps(overhead(min(args.train, 2000), args.threads), indent=1))
        return 0
    options = {"train": args.train, "test": args.test, "checkpoints": args.checkpoints, "batch_size": args.batch_size,
               "top_k": args.top_k, "threads": args.threads}  # fmt: skip
    results = {}
    for method in ("normgrad", "captum"):
        results[method] = measure(method, options)
        print(f"{method}: {results[method]['seconds']:.1f} s, peak {results[method]['peak_mib']:.0f} MiB", file=sys.stderr)
    agreement = abs(results["normgrad"]["checksum"] - results["captum"]["checksum"]) / max(results["captum"]["checksum"], 1e-30)
    document = {
        "command": "python benchmarks/bench_influence.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "train_images": args.train,
        "test_images": args.test,
        "checkpoints": args.checkpoints,
        "layers": LAYERS,
        "top_k": args.top_k,
        "threads": args.threads,
        "cpu": os.cpu_count(),
        "score_checksum_relative_difference": agreement,
        **results,
    }
    print(json.dumps(document, indent=1))
    if args.out is not None:
        from normgrad.evaluation.influence import markdown

        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / markdown.COST_FILE).write_text(json.dumps(document, indent=1) + "\n")
        if (args.out / "influence.json").exists():
            markdown.write(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
