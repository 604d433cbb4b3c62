"""Inpainting head gather at the masked sensors: per-event Python loop vs the vectorised
fixed-capacity gather of xecbench.nn.gather_masked, at batch 512 with 5 % and 60 % masks.

On a 2-core CPU the two are about even (the loop's per-row nonzero is cheap there); the vectorised
form exists for what the loop cannot do: fixed shapes and no host synchronisation, which CUDA
graphs, torch.compile and an asynchronous GPU need. On CUDA the loop pays one sync per event.

    python benchmarks/bench_gather.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, write_json  # noqa: E402

from xecbench.nn import gather_masked, random_hidden  # noqa: E402
from xecbench.nn.reference import gather_masked_loop  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--out", default="benchmarks/results/gather.json")
    a = p.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    values = torch.randn(a.batch, 4760, 2, device=device)
    valid = torch.ones(a.batch, 4760, dtype=torch.bool, device=device)
    res = {}
    for ratio in (0.05, 0.6):
        mask = random_hidden(valid, ratio)
        cap = int(ratio * 4760) + 1
        _, g, ok, _ = gather_masked(values, mask, cap)
        assert torch.equal(g, gather_masked_loop(values, mask, cap))
        t_loop = best_time(lambda m=mask, c=cap: gather_masked_loop(values, m, c), repeats=3)
        t_vec = best_time(lambda m=mask, c=cap: gather_masked(values, m, c), repeats=5)
        res[f"mask_{ratio}"] = {"loop_ms": 1e3 * t_loop, "vectorised_ms": 1e3 * t_vec, "speedup": t_loop / t_vec}
    write_json(a.out, {"batch": a.batch, "device": device, **res})


if __name__ == "__main__":
    main()
