"""Explorer latency: how long a new map takes, request to response, with ``normgrad serve`` on the embedded EfficientNet-Lite0.

Starts ``normgrad serve`` in its own process (a free port on 127.0.0.1),
uploads scikit-image's ``chelsea`` (451×300; model input 224×336) and times
``POST /api/explain`` from this process over HTTP: every request a class not
asked before, so every answer is a new map (nothing is cached).  Reports the
median, 90th percentile and maximum of the round trip, the server's own
compute time, the answer's size, and the machine's load (1-minute load
average and the number of CPUs) before and after, since a busy machine
slows everything down.  Writes the "Explorer latency" section of
``docs/benchmarks.md`` (the rest of the file is left as it is).

    python benchmarks/bench_serve.py [--requests 30] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from measure import machine

BEGIN, END = "<!-- bench_serve: begin -->", "<!-- bench_serve: end -->"
CASES = {
    "NormGrad, 4 default layers + combined": {"method": "normgrad"},
    "NormGrad selective, 4 layers": {"method": "selective"},
    "meta NormGrad (lr 0.0025, 1 step), 4 layers": {"method": "meta", "lr": 0.0025, "steps": 1},
    "Grad-CAM, 4 layers": {"method": "gradcam"},
}


def post(url: str, data: bytes, kind: str) -> tuple[dict, int, float]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": kind}, method="POST")
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as answer:
        body = answer.read()
    return json.loads(body), len(body), time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30, help="timed requests per case (default: 30)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md")
    args = parser.parse_args()

    import skimage.data
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buffer, format="JPEG", quality=95)
    port = free_port()
    load_before = os.getloadavg()[0]
    server = subprocess.Popen([sys.executable, "-m", "normgrad", "serve", "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()  # "normgrad serve: ... on http://..." once it listens and the model is loaded
        base = f"http://127.0.0.1:{port}"
        opened, _, upload_seconds = post(f"{base}/api/upload", buffer.getvalue(), "image/jpeg")
        rows = []
        target = 0
        for case, settings in CASES.items():
            for _ in range(3):  # warm-up
                post(f"{base}/api/explain", json.dumps({"image": opened["image"], **settings, "target": 999}).encode(), "application/json")
            trips, computes, sizes = [], [], []
            for _ in range(args.requests):
                body = json.dumps({"image": opened["image"], **settings, "target": target}).encode()
                target += 1  # a class never asked before: a new map
                answer, size, seconds = post(f"{base}/api/explain", body, "application/json")
                trips.append(seconds)
                computes.append(answer["seconds"])
                sizes.append(size)
            trips.sort()
            rows.append((case, statistics.median(trips), trips[int(0.9 * (len(trips) - 1))], trips[-1], statistics.median(computes),
                         statistics.median(sizes) / 2**20))  # fmt: skip
            print(f"{case}: median {rows[-1][1]:.3f} s, p90 {rows[-1][2]:.3f} s", flush=True)
    finally:
        server.terminate()
        server.wait(30)
    load_after = os.getloadavg()[0]
    cpus = os.cpu_count()
    lines = [
        BEGIN,
        "## Explorer latency (`normgrad serve`)",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/bench_serve.py` ({args.requests} timed requests per row after 3 warm-ups). "
        f"`normgrad serve` (its own process, default settings) with the embedded EfficientNet-Lite0 on scikit-image's `chelsea` "
        f"(451×300, model input 224×336); each request explains a class not asked before, so each answer is a new map "
        f"(the combined map and each layer's at display size, 16-bit levels). Round trip = from sending `POST /api/explain` "
        f"to having read the whole answer, over HTTP on 127.0.0.1. Machine load (1-minute load average on {cpus} CPUs): "
        f"{load_before:.1f} before, {load_after:.1f} after"
        + (
            " — **the machine was busy with other work: these times are pessimistic**."
            if max(load_before, load_after) > 0.5 * cpus
            else "."
        )
        + f" Opening the photo (upload, decode, predict): {upload_seconds:.3f} s.",
        "",
        "| request | round trip, median (s) | p90 (s) | max (s) | server compute, median (s) | answer (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {case} | {median:.3f} | {p90:.3f} | {worst:.3f} | {compute:.3f} | {size:.2f} |"
            for case, median, p90, worst, compute, size in rows
        ),
        END,
    ]
    section = "\n".join(lines) + "\n"
    text = args.out.read_text() if args.out.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    args.out.write_text(text)
    print(f"wrote the explorer section of {args.out}")


if __name__ == "__main__":
    main()
