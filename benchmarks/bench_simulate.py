"""Toy-simulation throughput (events/s) on one CPU core and on all cores; writes JSON.

    python benchmarks/bench_simulate.py [--events 4096] [--out benchmarks/results/simulate.json]
    python benchmarks/bench_simulate.py --profile  # torch.profiler table on one thread, no JSON

Target (foundation issue): >= 5000 events/s on one CPU core. About 60 % of one core's time is
the random draws themselves (torch.poisson of 4760 counts, the time jitter), which must stay
bit-identical (every notebook and README table rests on these events).
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


def profile(n_events: int) -> None:
    """Print the torch ops that take the time of ``simulate(n_events)`` on one thread."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(1)
    simulate(256, seed=99)  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        simulate(n_events, seed=0)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=4096)
    p.add_argument("--out", default="benchmarks/results/simulate.json")
    p.add_argument("--profile", action="store_true", help="print a profile table instead of measuring")
    args = p.parse_args()
    if args.profile:
        profile(min(args.events, 1024))
        return
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
