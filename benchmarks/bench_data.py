"""The data path from a ROOT file to training batches: read (uproot), normalise, batch, in events/s.

Writes a simulated file of ``--events`` events, then times ``make_loader(RootStream(file), batch)``
end to end (every batch touched, as a training loop would) with 0 workers (all in the main process),
and with 1 and 2 worker processes. The speed issue's target: 20,000 events/s per core, so that one
CPU worker keeps a GPU fed at the ``base`` size (about 10^3 events/s of training).

    python benchmarks/bench_data.py                  # 20,000 events
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_json  # noqa: E402

from xecbench.data import RootStream, make_loader, simulate, write_root  # noqa: E402


def events_per_second(path: Path, batch: int, workers: int, step_size: int) -> float:
    loader = make_loader(RootStream(path, step_size=step_size), batch_size=batch, num_workers=workers)
    n, total = 0, 0.0
    t0 = time.perf_counter()
    for b in loader:
        n += len(b["x"])
        total += float(b["x"][:, 0, 0].sum())  # touch every batch
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--step-size", type=int, default=2000, help="events per uproot chunk")
    p.add_argument("--file", default="runs/bench_data/events.root")
    p.add_argument("--out", default="benchmarks/results/data.json")
    a = p.parse_args()

    path = Path(a.file)
    if not path.is_file():
        write_root(path, (simulate(min(4096, a.events - s), seed=3, start=s) for s in range(0, a.events, 4096)))
    rows = {}
    for workers in (0, 1, 2):
        rate = events_per_second(path, a.batch, workers, a.step_size)
        rows[f"workers={workers}"] = round(rate)
        print(f"num_workers={workers}: {rate:,.0f} events/s", flush=True)
    # with no worker the main process does everything on (up to) all cores' threads; a worker is one core
    per_core = rows["workers=1"]
    targets = {
        "ROOT -> batches, one worker": {"value": per_core, "target": ">= 20000 events/s", "pass": per_core >= 20000}
    }
    for k, v in targets.items():
        print(f"{'PASS' if v['pass'] else 'FAIL'}  {k}: {v}")
    write_json(
        a.out,
        {
            "what": "RootStream + make_loader, read + normalise + batch",
            "events": a.events,
            "batch": a.batch,
            "step_size": a.step_size,
            "threads": torch.get_num_threads(),
            "events_per_s": rows,
            "targets": targets,
        },
    )


if __name__ == "__main__":
    main()
