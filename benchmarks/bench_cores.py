"""The machine's own scaling ceiling: do two processes of pure C work, pinned to two cores, run as fast as one?

``bench_pipeline.py`` reports how the explain pipeline scales from 1 to k cores.  This script says what the cores
themselves allow, with no Python interpreter lock and no shared state: SHA-256 and zlib level 6 over 1 MiB of
random bytes, one process pinned to CPU 0, then one process per CPU at once.  Scaling = T(one process) / T(k at once)
(1.0: each core as fast as one alone; about 0.6 for two hyperthreads of one core).  A pipeline that scales well
below this ceiling loses to its own design (the interpreter lock, hand-overs), not to the machine.

Usage: ``python benchmarks/bench_cores.py [--cores 2]``; prints one line per kind of work (Linux: it pins CPUs).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
import zlib
from multiprocessing import Process, Queue

WORK = {"sha256": (lambda data: hashlib.sha256(data).digest(), 300), "zlib level 6": (lambda data: zlib.compress(data, 6), 60)}


def work(cpu: int, kind: str, results: Queue) -> None:
    os.sched_setaffinity(0, [cpu])
    data = os.urandom(1 << 20)
    function, repeats = WORK[kind]
    start = time.perf_counter()
    for _ in range(repeats):
        function(data)
    results.put(time.perf_counter() - start)


def seconds(cpus: list[int], kind: str) -> float:
    """The slowest of ``len(cpus)`` processes run at once, one per CPU."""
    results: Queue = Queue()
    processes = [Process(target=work, args=(cpu, kind, results)) for cpu in cpus]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return max(results.get() for _ in processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))[: args.cores]
    if len(cpus) < args.cores:
        raise SystemExit(f"only {len(cpus)} CPU(s) available here; asked for {args.cores}")
    for kind in WORK:
        one, together = seconds(cpus[:1], kind), seconds(cpus, kind)
        print(f"{kind}: one process {one:.2f} s, {len(cpus)} at once {together:.2f} s each: scaling {one / together:.2f}")


if __name__ == "__main__":
    main()
