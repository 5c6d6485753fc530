"""Time and peak memory of a callable, in this process.

Peak memory is read from the profiler's allocation events (each ``[memory]``
event is one allocation or free, signed), so it counts every tensor the
callable allocates, on CPU as well as on CUDA, above what was live before.
"""

from __future__ import annotations

import gc
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each method, after a warm-up, runs interleaved so that drifts in machine speed hit all alike."""
    for fn in methods.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            times[name].append(median_seconds(fn, 1))
    return {name: statistics.median(t) for name, t in times.items()}


def peak_bytes(fn: Callable[[], object]) -> int:
    """The largest amount of memory the call held at once (its result included)."""
    gc.collect()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, profile_memory=True) as prof:
        result = fn()
        del result
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}"


def load_average() -> float:
    """The 1-minute load average (runnable processes; above the core count, measurements are shared with other work)."""
    return os.getloadavg()[0]


def write_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path``: replacing that section, else appended."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    old = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else (old.rstrip() + "\n\n" + block + "\n").lstrip()
    path.write_text(new if new.endswith("\n") else new + "\n")


RAM_FOLDER = Path("/dev/shm")


def scratch_folder(prefix: str, where: Path | None = None, need_bytes: int = 2 << 30) -> tempfile.TemporaryDirectory:
    """A temporary folder for a benchmark's photos and outputs: in ``where`` if given, else in RAM (``/dev/shm``) when it
    has ``need_bytes`` free, else the system's temporary folder.

    Why RAM: the pipeline's own cost is CPU work, and a disk adds noise that has nothing to do with it.  On an ext4
    folder mounted with ``discard``, deleting the previous round's outputs issues TRIMs that made the next round's
    file creations up to 25× slower (0.39 against 0.016 ms per ``open``; measured on this project's machine).
    :func:`file_system` names the one used, for the report.
    """
    if where is None and RAM_FOLDER.is_dir() and os.access(RAM_FOLDER, os.W_OK) and shutil.disk_usage(RAM_FOLDER).free >= need_bytes:
        where = RAM_FOLDER
    return tempfile.TemporaryDirectory(prefix=prefix, dir=where)


def file_system(path: Path) -> str:
    """The file system type of ``path`` (``tmpfs``, ``ext4``, ...) from ``/proc/mounts``; ``"unknown"`` elsewhere."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    resolved = str(Path(path).resolve())
    containing = [m for m in mounts if resolved == m[0] or resolved.startswith(m[0].rstrip("/") + "/")]
    return max(containing, key=lambda m: len(m[0]))[1] if containing else "unknown"
