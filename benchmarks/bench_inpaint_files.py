"""``xecbench inpaint`` on large ROOT files: peak memory independent of the file size, and events/s.

Writes a simulated file of ``--events`` events (npho, relative_time, run, event; written chunk by
chunk), and a file of a tenth of them, then runs ``xecbench inpaint --fill both`` on each in a child
process and reads the child's peak resident memory (``ru_maxrss``). Streaming holds if the big file
needs no more memory than the small one (within ``--slack``) and stays under ``--max-gb``. The model is
an untrained tiny inpainter (``inpaint_tiny``'s architecture): its cost, unlike its accuracy, does not
depend on training. Also reports the throughput (the speed issue's target: 1,000 events/s on 2 cores)
and where one core's time goes: inpaint's steps (read, fill mask, normalise, encoder, refiner, raw
units, write) run one after another on the small file's first 4,000 events.

    python benchmarks/bench_inpaint_files.py                   # 100,000 events (about 4 min on 2 cores)
    python benchmarks/bench_inpaint_files.py --events 10000    # quicker
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import uproot

sys.path.insert(0, str(Path(__file__).parent))
from common import write_json  # noqa: E402

from xecbench.data import simulate, write_root  # noqa: E402
from xecbench.data.io import fast_compression  # noqa: E402
from xecbench.inpaint_files import fill_mask, load_inpainter  # noqa: E402
from xecbench.memory import keep_freed_memory  # noqa: E402
from xecbench.nn import SensorMask  # noqa: E402
from xecbench.train import build_model, load_config  # noqa: E402

KEEP = ("npho", "relative_time", "run", "event")


def write_events(path: Path, n: int, chunk: int = 4096) -> None:
    def chunks():
        for start in range(0, n, chunk):
            ev = simulate(min(chunk, n - start), seed=7, start=start)
            yield {k: ev[k] for k in KEEP}

    write_root(path, chunks())


def run_child(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and the child's peak RSS in MB (children's ru_maxrss is the largest child so far:
    run the small file first)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "xecbench.cli", *argv], check=True)
    seconds = time.perf_counter() - t0
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


ENCODER = "encoder (a TorchScript trace, RawInpainter.refiner_inputs)"
REFINER = "refiner (estimates, heads at the sensors to fill)"


def profile_parts(src: Path, checkpoint: Path, step_size: int, batch: int = 64, events: int = 4000) -> dict:
    """Where one core's time goes per event: the steps of ``xecbench inpaint`` run one after another on
    the first ``events`` events of ``src``, torch on one thread (as each of inpaint's batch threads)."""
    inpainter, _ = load_inpainter(checkpoint)
    model, norm = inpainter.model, inpainter.normalizer
    parts = dict.fromkeys(
        [
            "read (uproot)",
            "fill mask",
            "normalise",
            ENCODER,
            REFINER,
            "back to raw units",
            "write (ZLIB through ISA-L, or the file's codec)",
        ],
        0.0,
    )

    def timed(name, f, *args):
        t0 = time.perf_counter()
        out = f(*args)
        parts[name] += time.perf_counter() - t0
        return out

    keep_freed_memory()  # as xecbench inpaint does (xecbench/memory.py): no page faults in the figures
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tree = uproot.open(src)["tree"]
    first = tree.arrays(["npho", "relative_time"], entry_stop=batch, library="np")
    with torch.inference_mode():  # the trace is made at the first call: outside the timing
        x, valid, tv = norm.normalize(first["npho"], first["relative_time"])
        inpainter.refiner_inputs(x, SensorMask(valid, tv, torch.from_numpy(fill_mask(first["npho"], "both"))))
    compression = fast_compression(tree.file.compression)
    chunks = tree.iterate(KEEP, step_size=step_size, entry_stop=events, library="np")
    with tempfile.TemporaryDirectory() as tmp, uproot.recreate(Path(tmp) / "out.root", compression=compression) as f:
        out_tree = None
        while (chunk := timed("read (uproot)", next, chunks, None)) is not None:
            npho, time_ = chunk["npho"], chunk["relative_time"]
            fill = torch.from_numpy(timed("fill mask", fill_mask, npho, "both"))
            filled = np.empty_like(npho)
            with torch.inference_mode():
                for start in range(0, len(npho), batch):
                    sl = slice(start, start + batch)
                    sensors = torch.from_numpy(np.stack([npho[sl], time_[sl]], axis=-1))  # as inpaint_arrays
                    x, valid, tv = timed("normalise", norm.normalize, sensors[..., 0], sensors[..., 1])
                    masks = SensorMask(valid, tv, fill[sl])
                    tokens, _ = timed(ENCODER, inpainter.refiner_inputs, x, masks)  # as inpaint runs it
                    pred = timed(REFINER, model.refiner, x, masks, tokens, None, fill[sl])
                    raw = timed("back to raw units", inpainter.raw_filled, sensors, fill[sl], pred, True)
                    filled[sl] = raw[..., 0].numpy()
            arrays = {**chunk, "npho": filled, "inpainted": fill.numpy()}
            if out_tree is None:
                out_tree = f.mktree("tree", {k: (v.dtype, v.shape[1:]) for k, v in arrays.items()})
            timed("write (ZLIB through ISA-L, or the file's codec)", out_tree.extend, arrays)
    torch.set_num_threads(threads)
    total = sum(parts.values())
    table = {k: {"us_per_event": round(v / events * 1e6, 1), "share": round(v / total, 3)} for k, v in parts.items()}
    table["total"] = {"us_per_event": round(total / events * 1e6, 1), "share": 1.0}
    print(f"\nwhere one core's time goes ({events} events, batch {batch}, one thread)")
    for k, v in table.items():
        print(f"  {k:52s} {v['us_per_event']:8.1f} us/event  {v['share']:6.1%}")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100_000, help="events in the big file")
    p.add_argument("--step-size", type=int, default=2000, help="events per chunk (xecbench inpaint --step-size)")
    p.add_argument("--max-gb", type=float, default=2.0, help="peak memory allowed for the big file")
    p.add_argument("--slack", type=float, default=1.15, help="allowed ratio of big-file to small-file peak memory")
    p.add_argument("--work", default="runs/bench_inpaint_files", help="folder for the files (several GB)")
    p.add_argument("--out", default="benchmarks/results/inpaint_files.json")
    a = p.parse_args()

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config("inpaint_tiny", ["model.init_from=null", "model.freeze_encoder=false"])
    torch.manual_seed(0)
    state = {"model": build_model(cfg.model).state_dict(), "ema": None, "epoch": 0, "step": 0, "config": cfg.to_dict()}
    torch.save(state, work / "inpaint.pt")

    rows = {}
    for name, n in (("small", max(a.events // 10, 1)), ("big", a.events)):
        src, dst = work / f"{name}.root", work / f"{name}_filled.root"
        t0 = time.perf_counter()
        write_events(src, n)
        write_s = time.perf_counter() - t0
        argv = ["inpaint", str(src), "--checkpoint", str(work / "inpaint.pt"), "--out", str(dst), "--fill", "both"]
        seconds, peak_mb = run_child([*argv, "--step-size", str(a.step_size), "--quiet"])
        rows[name] = {
            "events": n,
            "file_gb": round(src.stat().st_size / 1e9, 3),
            "simulate_and_write_s": round(write_s, 1),
            "inpaint_s": round(seconds, 1),
            "events_per_s": round(n / seconds, 1),
            "peak_rss_mb": round(peak_mb, 1),
        }
        print(name, rows[name], flush=True)
        if name == "small":
            profile = profile_parts(src, work / "inpaint.pt", a.step_size, events=min(n, 4000))
        for f in (src, dst):
            os.remove(f)  # several GB each

    ratio = rows["big"]["peak_rss_mb"] / rows["small"]["peak_rss_mb"]
    targets = {
        "memory independent of file size": {
            "value": round(ratio, 3),
            "target": f"<= {a.slack}",
            "pass": ratio <= a.slack,
        },
        f"peak memory at {a.events} events": {
            "value_mb": rows["big"]["peak_rss_mb"],
            "target": f"<= {a.max_gb} GB",
            "pass": rows["big"]["peak_rss_mb"] <= a.max_gb * 1024,
        },
        "throughput, 2 CPU cores (speed issue)": {
            "value": rows["big"]["events_per_s"],
            "target": ">= 1000 events/s",
            "pass": rows["big"]["events_per_s"] >= 1000,
        },
    }
    for k, v in targets.items():
        print(f"{'PASS' if v['pass'] else 'FAIL'}  {k}: {v}")
    write_json(
        a.out,
        {
            "what": "xecbench inpaint --fill both, untrained tiny inpainter, CPU",
            "step_size": a.step_size,
            "threads": torch.get_num_threads(),
            "rows": rows,
            "profile_one_core": profile,
            "targets": targets,
        },
    )


if __name__ == "__main__":
    main()
