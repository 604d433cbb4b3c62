"""Inpainting against the classical baselines and the Poisson floor, as the README recipe trains it.

Trains the tiny MAE (``configs/mae_tiny.yaml``), then the inpainter on its encoder
(``configs/inpaint_tiny.yaml``), on their fixed seeds, and evaluates the inpainter's EMA weights (what
``xecbench evaluate`` uses) on held-out simulated events (a seed training never used) at a 5 % mask:
per face and overall, in raw photons and normalised npho, MAE / RMSE / bias / 68 % width of the
model, the neighbour average, the solid-angle estimate and the oracle (each hidden sensor predicted by
its expected count: the Poisson floor), the fraction of the neighbour-average-to-floor gap closed, and
the training wall time. The MAE itself is scored the same way at its own 60 % mask against the
neighbour average (its reconstruction has to beat it too).

    python benchmarks/bench_inpaint.py                  # the recipe, 2000 evaluation events
    python benchmarks/bench_inpaint.py --events 500     # quicker
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_json  # noqa: E402

from xecbench.data import EventDataset  # noqa: E402
from xecbench.eval import compare_inpainting, format_table  # noqa: E402
from xecbench.experiments import CONFIGS  # noqa: E402
from xecbench.train import build_normalizer, build_sim_config, load_config, run_training  # noqa: E402

BASELINES = ("neighbour_average", "solid_angle")


def targets(result: dict, mae_result: dict) -> dict[str, bool]:
    """The inpainting issue's targets, checked on the inpainter's and the MAE's results."""
    norm, raw = result["normalised"], result["raw"]
    faces = [f for f in norm["model"] if f != "all"]
    beats = {
        f"{units} {stat} at or below both baselines on every face": all(
            table["model"][f][stat] <= min(table[b][f][stat] for b in BASELINES) for f in faces
        )
        for units, table in (("normalised", norm), ("raw", raw))
        for stat in ("rmse", "mae")
    }
    ratio = norm["model"]["all"]["rmse"] / norm["neighbour_average"]["all"]["rmse"]
    return {
        **beats,
        "overall normalised RMSE at most 0.8x the neighbour average": ratio <= 0.8,
        "at least half the neighbour-average-to-floor gap closed": result["gap_closed"]["all"] >= 0.5,
        "MAE at its mask ratio: normalised RMSE at or below the neighbour average on every face": all(
            mae_result["normalised"]["model"][f]["rmse"] <= mae_result["normalised"]["neighbour_average"][f]["rmse"]
            for f in faces
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=2000, help="held-out evaluation events")
    p.add_argument("--seed", type=int, default=2024, help="evaluation seed (training uses 0 and 1000003)")
    p.add_argument("--mask-ratio", type=float, default=0.05)
    p.add_argument("--runs", default="runs/bench_inpaint", help="where the two training runs go")
    p.add_argument("--out", default="benchmarks/results/inpaint.json")
    a = p.parse_args()
    runs = Path(a.runs)
    quiet = ["training.progress=false"]

    t0 = time.perf_counter()
    mae = run_training(load_config(CONFIGS / "mae_tiny.yaml", [*quiet, f"training.run_dir={runs / 'mae'}"]))
    t1 = time.perf_counter()
    cfg = load_config(
        CONFIGS / "inpaint_tiny.yaml",
        [*quiet, f"training.run_dir={runs / 'inpaint'}", f"model.init_from={runs / 'mae' / 'checkpoint.pt'}"],
    )
    inp = run_training(cfg)
    t2 = time.perf_counter()

    model = (inp.ema.module if inp.ema is not None else inp.model).cpu()
    data = EventDataset.from_simulation(
        a.events, seed=a.seed, config=build_sim_config(cfg.data), normalizer=build_normalizer(cfg.data)
    )
    result = compare_inpainting(model, data, mask_ratio=a.mask_ratio, seed=a.seed)
    for units in ("normalised", "raw"):
        for stat in ("rmse", "mae"):
            print(f"[{units} npho] {stat}\n{format_table(result[units], stat)}\n")
    gaps = "  ".join(f"{f} {v:.0%}" for f, v in result["gap_closed"].items())
    print(f"gap closed (normalised MSE): {gaps}\n")
    mae_model = (mae.ema.module if mae.ema is not None else mae.model).cpu()
    mae_ratio = mae_model.cfg.mask_ratio
    mae_result = compare_inpainting(mae_model, data, mask_ratio=mae_ratio, seed=a.seed)
    print(f"[MAE reconstruction at mask {mae_ratio}, normalised npho] rmse\n{format_table(mae_result['normalised'])}\n")
    checks = targets(result, mae_result)
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    seen = {
        "mae": mae.cfg.epochs * len(mae.train_data),
        "inpaint": cfg.training.epochs * len(inp.train_data),
    }
    training = {
        "mae_seconds": t1 - t0,
        "inpaint_seconds": t2 - t1,
        "total_seconds": t2 - t0,
        "mae_events_per_s": seen["mae"] / (t1 - t0),
        "inpaint_events_per_s": seen["inpaint"] / (t2 - t1),
        "threads": torch.get_num_threads(),
    }
    print(f"training: MAE {training['mae_seconds']:.0f} s, inpainter {training['inpaint_seconds']:.0f} s")
    write_json(
        a.out,
        {
            "events": a.events,
            "seed": a.seed,
            "mask_ratio": a.mask_ratio,
            "training": training,
            "normalised": result["normalised"],
            "raw": result["raw"],
            "gap_closed": result["gap_closed"],
            "mae_reconstruction": {
                "mask_ratio": mae_ratio,
                "normalised": mae_result["normalised"],
                "raw": mae_result["raw"],
                "gap_closed": mae_result["gap_closed"],
            },
            "targets": checks,
        },
    )


if __name__ == "__main__":
    main()
