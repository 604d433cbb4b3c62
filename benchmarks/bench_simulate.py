"""Toy-simulation throughput (events/s) on one CPU core and on all cores; writes JSON.

    python benchmarks/bench_simulate.py [--events 4096] [--out benchmarks/results/simulate.json]

Target (foundation issue): >= 5000 events/s on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from xecbench.data import simulate
from xecbench.data.io import atomic_path

TARGET = 5000.0


def rate(n_events: int, threads: int, repeats: int = 3) -> float:
    torch.set_num_threads(threads)
    simulate(256, seed=99)  # warm-up (caches, allocator)
    best = 0.0
    for r in range(repeats):
        t = time.perf_counter()
        simulate(n_events, seed=r)
        best = max(best, n_events / (time.perf_counter() - t))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=4096)
    p.add_argument("--out", default="benchmarks/results/simulate.json")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    one = rate(args.events, 1)
    alls = rate(args.events, cores)
    result = {
        "events": args.events,
        "events_per_s_1_thread": round(one, 1),
        f"events_per_s_{cores}_threads": round(alls, 1),
        "target_events_per_s_1_thread": TARGET,
        "ratio_to_target": round(one / TARGET, 3),
        "machine": {"cpu_count": cores, "platform": platform.platform(), "torch": torch.__version__},
    }
    print(json.dumps(result, indent=2))
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
