"""Training-step throughput (events/s) of the MAE and the inpainter, presets tiny and base,
fp32 vs bf16 autocast, eager vs torch.compile; on CUDA when present, else CPU. Also where a step's
time goes (torch.profiler: the parts of a step and the busiest operators), and, given the seed
system's code, both MAEs side by side at the same token width.

    python benchmarks/bench_models.py                      # eager, fp32 + bf16 (bf16 tiny only on CPU)
    python benchmarks/bench_models.py --compile            # also torch.compile (adds ~1 min per model)
    python benchmarks/bench_models.py --anchor ../xec-ml-wl --presets base   # + the seed system's MAE
    python benchmarks/bench_models.py --anchor ../xec-ml-wl --presets base --compile   # + ours compiled

``--anchor DIR``: a checkout of the seed system (weiyuanli-icepp/xec-ml-wl; its ``lib`` package needs
numpy and scipy). Its MAE is built at token width 1024 (``XECEncoder(encoder_dim=1024)``, 45.0 M
parameters) and timed in alternation with ours (``base``: token width 1024), batch 32, AdamW, the
median of the repeats and their ratio, and each one's FLOPs per step and rate against one large
matrix product's (how much faster ours could still get at its architecture's FLOPs). Its loss is
replaced by the mean square of its reconstructions (computing a loss is a small part of a step); its
masking is its own (60 % of the valid sensors).
The code is imported from DIR at run time, never copied here.

Targets on the 2-core CPU: MAE step at batch 32 faster than 150 events/s for tiny and faster than
12 events/s for base (models issue); at least 2x the seed system's events/s at token width 1024
(speed issue).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, write_json  # noqa: E402
from torch.profiler import profile, record_function  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count  # noqa: E402

from xecbench.eval.stats import t_critical  # noqa: E402
from xecbench.memory import keep_freed_memory  # noqa: E402
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
PARTS = ("encoder", "decoder", "loss", "backward", "optimizer")


def _inputs(batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4760, 2, generator=g).to(device)
    valid = (torch.rand(batch, 4760, generator=g) > 0.01).to(device)
    tv = valid & (torch.rand(batch, 4760, generator=g) > 0.9).to(device)
    return x, valid, tv


def make_step(kind: str, preset: str, device: str, batch: int, amp: bool, compile_: bool):
    """One training step of ours; its parts are labelled for the profiler."""
    torch.manual_seed(0)
    mae = XECMAE(MAEConfig(encoder=encoder_config(preset)))
    model = mae if kind == "mae" else XECInpainter(mae.encoder, freeze_encoder=False)
    model.to(device).train()
    fwd = torch.compile(model) if compile_ else model
    # fused, as the Trainer's (xecbench.train.build_optimizer)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    x, valid, tv = _inputs(batch, device)
    inpaint_masks = SensorMask(valid, tv, random_hidden(valid, 0.05))

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            if compile_:
                out = fwd(x, mae.draw_masks(valid, tv)) if kind == "mae" else fwd(x, inpaint_masks, capacity=400)
                loss = out.loss
            elif kind == "mae":
                masks = mae.draw_masks(valid, tv)
                with record_function("encoder"):
                    enc = mae.encoder(x, masks)
                with record_function("decoder"):
                    pred = mae.decode(x, masks, enc)
                with record_function("loss"):
                    loss = mae.loss(pred, x, masks)[0]
            else:
                loss = fwd(x, inpaint_masks, capacity=400).loss
        opt.zero_grad(set_to_none=True)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            opt.step()

    return step, count_parameters(model)


def make_anchor_step(anchor: str, device: str, batch: int):
    """One training step of the seed system's MAE at token width 1024, imported from ``anchor``."""
    sys.path.insert(0, str(Path(anchor).resolve()))
    from lib.models.mae import XEC_MAE  # noqa: PLC0415 (the seed system, given by path)
    from lib.models.regressor import XECEncoder as SeedEncoder  # noqa: PLC0415

    torch.manual_seed(0)
    model = XEC_MAE(SeedEncoder(encoder_dim=1024)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    x, valid, _ = _inputs(batch, device)
    x[..., 1] = torch.where(valid, x[..., 1], -1.0)  # its sentinel for an invalid time

    def step():
        recons, _ = model(x)
        loss = sum(r.float().pow(2).mean() for r in recons.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in model.parameters())


def alternate(steps: dict[str, object], repeats: int, sync, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each step, timed in turn (A, B, A, B, ...) so both see the same machine,
    after ``warmup`` untimed calls of each (the seed system's first steps are several times slower
    than its later ones while its allocations settle)."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for k, fn in steps.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    return times


def pair_ratio_interval(slow: list[float], fast: list[float]) -> tuple[float, float]:
    """The 95 % interval of the speed ratio ``slow / fast`` from alternated timings, paired by position:
    a t-interval on the mean of the pairs' log ratios (each pair saw the same state of the machine,
    so the pairs' spread is the noise the ratio has), turned back into ratios: an interval for the
    geometric mean of the pairs' ratios (the headline ratio of medians is close to it, not the same)."""
    if len(slow) != len(fast):
        raise ValueError(f"pair_ratio_interval: {len(slow)} and {len(fast)} timings do not pair up")
    logs = [math.log(a / b) for a, b in zip(slow, fast)]
    if len(logs) < 2:
        raise ValueError(f"pair_ratio_interval: needs at least 2 pairs, got {len(logs)}")
    half = t_critical(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    centre = statistics.fmean(logs)
    return math.exp(centre - half), math.exp(centre + half)


def profile_step(step, top: int = 15) -> dict:
    """Where one step's time goes: the labelled parts and the busiest operators (self time)."""
    step()
    with profile() as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    parts = {e.key: round(e.cpu_time_total / 1e3, 1) for e in events if e.key in PARTS}
    ops = sorted((e for e in events if e.key not in PARTS), key=lambda e: -e.self_cpu_time_total)[:top]
    table = [
        {
            "op": e.key,
            "self_ms": round(e.self_cpu_time_total / 1e3, 1),
            "calls": e.count,
            "share": round(e.self_cpu_time_total / 1e3 / total, 3),
        }
        for e in ops
    ]
    print(f"  parts of one step (ms): {parts}")
    print(f"  {'operator':<40} {'self ms':>9} {'calls':>6} {'share':>6}")
    for r in table:
        print(f"  {r['op']:<40} {r['self_ms']:>9} {r['calls']:>6} {r['share']:>6.1%}")
    return {"total_ms": round(total, 1), "parts_ms": parts, "top_ops": table}


def conv_backward_flops(grad_out_shape, x_shape, w_shape, *conv_args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``: each gradient asked for (input, weight) costs what the
    forward convolution costs. torch's own formula (``torch.utils.flop_counter``, torch 2.13) counts
    the weight gradient as a convolution over the transposed tensors without the groups, ``groups``
    times too many: for a depthwise 7x7 over C channels, C times (96 to 384 here), which more than
    doubled a ``base`` MAE step's count (301 GFLOP instead of 165)."""
    # the rest of aten.convolution_backward's arguments: bias sizes, stride, padding, dilation,
    # transposed, output padding, groups, output mask
    transposed, output_mask = conv_args[4], conv_args[7]
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def step_flops(step) -> float:
    """Floating-point operations in one call of ``step``: torch's ``FlopCounterMode`` counts the matrix
    products and convolutions of the forward and the backward pass (elementwise work is not counted),
    with :func:`conv_backward_flops` for the convolutions' backward."""
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})
    with counter:
        step()
    return float(counter.get_total_flops())


def matmul_ceiling(device: str, n: int = 2048) -> float:
    """GFLOP/s of a large fp32 matrix product on this machine's threads: about as fast as the library
    computes at all, so what a step's own rate (its FLOPs over its time) is measured against."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / best_time(lambda: torch.mm(a, b), repeats=5, warmup=2) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32, help="events per training step (default 32)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--presets", default="tiny,base", help="encoder presets, comma-separated (default tiny,base)")
    p.add_argument("--anchor", help="a checkout of the seed system: time its MAE beside ours at token width 1024")
    p.add_argument("--repeats", type=int, default=7, help="alternating repeats with --anchor")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls of each step before them")
    p.add_argument("--no-profile", action="store_true", help="skip the profile of each MAE step")
    p.add_argument("--out", default="benchmarks/results/models.json", help="where the JSON goes")
    a = p.parse_args()
    keep_freed_memory()  # as the Trainer and xecbench inpaint do (xecbench/memory.py)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows, profiles = [], {}
    for preset in a.presets.split(","):
        for kind in ("mae", "inpaint"):
            # bf16 autocast on a CPU: several times slower where the CPU lacks bf16 instructions (an Intel
            # AVX2 machine), faster on the AMD EPYC of later runs; measured on tiny only
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
                    if kind == "mae" and not amp and not comp and not a.no_profile:
                        print(f"where a step of the {preset} MAE spends its time (batch {a.batch}):")
                        profiles[f"mae_{preset}"] = profile_step(step)
    result = {"device": device, "batch": a.batch, "results": rows, "profiles": profiles}
    if a.anchor:
        ours, n_ours = make_step("mae", "base", device, a.batch, False, False)
        seed, n_seed = make_anchor_step(a.anchor, device, a.batch)
        steps = {"seed": seed, "xecbench": ours}
        if a.compile:  # ours with training.compile=true as well (the seed system is run as it is, eager)
            steps["xecbench compiled"] = make_step("mae", "base", device, a.batch, False, True)[0]
            steps["xecbench compiled"]()  # the compilation, outside the timing
        times = alternate(steps, a.repeats, sync, a.warmup)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["seed"] / med["xecbench"]
        low, high = pair_ratio_interval(times["seed"], times["xecbench"])
        result["side_by_side"] = {
            "what": f"MAE training step at token width 1024, batch {a.batch}, AdamW, fp32, timed in alternation",
            "seed_params": n_seed,
            "xecbench_params": n_ours,
            "seed_events_per_s": [round(a.batch / t, 2) for t in times["seed"]],
            "xecbench_events_per_s": [round(a.batch / t, 2) for t in times["xecbench"]],
            "ratio_of_medians": round(ratio, 3),
            "ratio_95_interval": [round(low, 3), round(high, 3)],
            "target": ">= 2.0 (speed issue)",
            "pass": ratio >= 2.0,
            "pass_with_95_confidence": low >= 2.0,
        }
        print(
            f"{'PASS' if ratio >= 2 else 'FAIL'}  xecbench base / seed MAE at token width 1024: {ratio:.2f}x "
            f"(95 % interval of the pairs' ratio {low:.2f}-{high:.2f}x)"
        )
        # how close each runs to the machine: its FLOPs per step over its median step time, against the
        # rate of one large matrix product; ours at the ceiling would be ceiling / rate times faster
        ceiling = matmul_ceiling(device)
        flops = {"seed": step_flops(seed), "xecbench": step_flops(ours)}
        rates = {k: flops[k] / med[k] / 1e9 for k in flops}
        result["side_by_side"]["flops"] = {
            "what": "matrix products and convolutions per step, forward + backward (FlopCounterMode)",
            "gflop_per_step": {k: round(v / 1e9, 1) for k, v in flops.items()},
            "gflop_per_s": {k: round(v, 1) for k, v in rates.items()},
            "matmul_ceiling_gflop_per_s": round(ceiling, 1),
            "share_of_ceiling": {k: round(v / ceiling, 3) for k, v in rates.items()},
            "ratio_bound_at_ceiling": round(ceiling / rates["xecbench"] * ratio, 2),
        }
        for k in flops:
            print(
                f"  {k}: {flops[k] / 1e9:.0f} GFLOP per step at {rates[k]:.0f} GFLOP/s, "
                f"{rates[k] / ceiling:.0%} of one large matrix product's {ceiling:.0f} GFLOP/s"
            )
        if "xecbench compiled" in times:
            compiled = med["seed"] / med["xecbench compiled"]
            result["side_by_side"] |= {
                "xecbench_compiled_events_per_s": [round(a.batch / t, 2) for t in times["xecbench compiled"]],
                "compiled_ratio_of_medians": round(compiled, 3),
                "compiled_pass": compiled >= 2.0,
            }
            print(f"{'PASS' if compiled >= 2 else 'FAIL'}  xecbench base compiled / seed MAE: {compiled:.2f}x")
    write_json(a.out, result)


if __name__ == "__main__":
    main()
