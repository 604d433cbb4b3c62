"""Downstream regression against the classical reconstruction, as ``configs/regress_tiny.yaml`` trains it.

Trains the README recipe (a tiny encoder from scratch, heads that correct the calibrated classical
reconstruction; flat 10-60 MeV spectrum) on its fixed seed, then evaluates its EMA weights (what
``xecbench evaluate`` uses) on held-out simulated events from a seed training never used, next to the
classical estimates calibrated on the training events: bias and 68 % width per target, the energy
resolution in bins of energy, the training wall time, and the regression issue's targets.

    python benchmarks/bench_regress.py                  # the recipe, 2000 evaluation events
    python benchmarks/bench_regress.py --events 500     # quicker
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_json  # noqa: E402

from xecbench.data import EventDataset  # noqa: E402
from xecbench.eval import compare_regression, format_regression_table  # noqa: E402
from xecbench.experiments import CONFIGS  # noqa: E402
from xecbench.train import build_normalizer, build_sim_config, load_config, run_training  # noqa: E402


def bootstrap_width68(residuals: np.ndarray, n: int = 200, seed: int = 0) -> float:
    """Standard error of the 68 % width by resampling the events."""
    rng = np.random.default_rng(seed)
    widths = []
    for _ in range(n):
        r = rng.choice(residuals, size=len(residuals))
        lo, hi = np.percentile(r, [15.865, 84.135])
        widths.append((hi - lo) / 2)
    return float(np.std(widths))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=2000, help="held-out evaluation events")
    p.add_argument("--seed", type=int, default=2024, help="evaluation seed (training uses 0 and 1000003)")
    p.add_argument("--run", default="runs/bench_regress", help="where the training run goes")
    p.add_argument("--out", default="benchmarks/results/regress.json")
    a = p.parse_args()

    cfg = load_config(CONFIGS / "regress_tiny.yaml", ["training.progress=false", f"training.run_dir={a.run}"])
    t0 = time.perf_counter()
    trainer = run_training(cfg)
    seconds = time.perf_counter() - t0
    model = (trainer.ema.module if trainer.ema is not None else trainer.model).cpu()
    data = EventDataset.from_simulation(
        a.events, seed=a.seed, config=build_sim_config(cfg.data), normalizer=build_normalizer(cfg.data)
    )
    result = compare_regression(model, data, trainer.train_data)
    metrics = result["metrics"]
    for stat in ("width68", "bias"):
        print(f"{format_regression_table(metrics, stat)}\n")
    for method, rows in result["energy_bins"].items():
        print(f"energy resolution in bins, {method}: " + "  ".join(f"{r['width68']:.4f}" for r in rows))

    # the energy target: no worse than the total light within its statistical error (bootstrap)
    truth_e = result["truth"]["energy"].numpy().ravel()
    rel = {m: (p["energy"].numpy().ravel() - truth_e) / truth_e for m, p in result["pred"].items()}
    err = {m: bootstrap_width68(r) for m, r in rel.items()}
    e_model, e_classical = metrics["model"]["energy rel."]["width68"], metrics["classical"]["energy rel."]["width68"]
    pos_ratio = metrics["model"]["uvw 3D [cm]"]["width68"] / metrics["classical"]["uvw 3D [cm]"]["width68"]
    checks = {
        "position: 68 % of the 3D distance at most 0.7x the centroid's": pos_ratio <= 0.7,
        "energy: resolution no worse than the total light's within its statistical error": e_model
        <= e_classical + float(np.hypot(err["model"], err["classical"])),
    }
    print(
        f"\nposition 68 % (3D): {pos_ratio:.2f}x the classical; energy resolution "
        f"{e_model:.4f} +- {err['model']:.4f} against {e_classical:.4f} +- {err['classical']:.4f}"
    )
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    n_seen = cfg.training.epochs * len(trainer.train_data)
    print(f"training: {seconds:.0f} s, {n_seen / seconds:.0f} events/s")
    write_json(
        a.out,
        {
            "events": a.events,
            "seed": a.seed,
            "training": {"seconds": seconds, "events_per_s": n_seen / seconds, "threads": torch.get_num_threads()},
            "metrics": metrics,
            "energy_width68_stat_error": err,
            "energy_bins": result["energy_bins"],
            "targets": checks,
        },
    )


if __name__ == "__main__":
    main()
