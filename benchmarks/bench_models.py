"""Training-step throughput (events/s) of the MAE and the inpainter, presets tiny and base,
fp32 vs bf16 autocast, eager vs torch.compile; on CUDA when present, else CPU.

    python benchmarks/bench_models.py                      # eager, fp32 + bf16 (bf16 tiny only on CPU)
    python benchmarks/bench_models.py --compile            # also torch.compile (adds ~1 min per model)

Targets on the 2-core CPU (models issue): MAE step at batch 32 faster than 150 events/s for tiny
and faster than 12 events/s for base.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, write_json  # noqa: E402

from xecbench.nn import (  # noqa: E402
    XECMAE,
    MAEConfig,
    SensorMask,
    XECInpainter,
    count_parameters,
    encoder_config,
    random_hidden,
)

TARGETS = {"mae_tiny": 150.0, "mae_base": 12.0}


def make_step(kind: str, preset: str, device: str, batch: int, amp: bool, compile_: bool):
    torch.manual_seed(0)
    mae = XECMAE(MAEConfig(encoder=encoder_config(preset)))
    model = mae if kind == "mae" else XECInpainter(mae.encoder, freeze_encoder=False)
    model.to(device).train()
    fwd = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, foreach=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4760, 2, generator=g).to(device)
    valid = (torch.rand(batch, 4760, generator=g) > 0.01).to(device)
    tv = valid & (torch.rand(batch, 4760, generator=g) > 0.9).to(device)
    inpaint_masks = SensorMask(valid, tv, random_hidden(valid, 0.05))

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            if kind == "mae":
                out = fwd(x, mae.draw_masks(valid, tv))
            else:
                out = fwd(x, inpaint_masks, capacity=400)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step, count_parameters(model)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--presets", default="tiny,base")
    p.add_argument("--out", default="benchmarks/results/models.json")
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for preset in a.presets.split(","):
        for kind in ("mae", "inpaint"):
            # bf16 on this CPU has no native support and is several times slower: measured on tiny only
            amps = (False, True) if (device == "cuda" or preset == "tiny") else (False,)
            for amp in amps:
                for comp in (False, True) if a.compile else (False,):
                    step, n_params = make_step(kind, preset, device, a.batch, amp, comp)
                    t = best_time(step, repeats=3 if preset == "base" else 5, warmup=2 if comp else 1)
                    row = {
                        "model": kind,
                        "preset": preset,
                        "bf16": amp,
                        "compiled": comp,
                        "params": n_params,
                        "step_s": round(t, 4),
                        "events_per_s": round(a.batch / t, 1),
                    }
                    target = TARGETS.get(f"{kind}_{preset}")
                    if target and not amp and not comp and device == "cpu":
                        row["target_events_per_s"] = target
                        row["ratio_to_target"] = round(a.batch / t / target, 2)
                    print(row, flush=True)
                    rows.append(row)
    write_json(a.out, {"device": device, "batch": a.batch, "results": rows})


if __name__ == "__main__":
    main()
