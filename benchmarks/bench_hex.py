"""Hex graph convolution: gather on the padded neighbour table vs scatter (index_add) vs a dense
73 x 73 masked matrix. The fastest form is the one in xecbench.nn.hex (the gather).

    python benchmarks/bench_hex.py [--batch 256] [--dim 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, write_json  # noqa: E402

from xecbench import geometry as geo  # noqa: E402
from xecbench.nn.hex import HexConv  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/hex.json")
    a = p.parse_args()
    torch.manual_seed(0)
    conv = HexConv(a.dim)
    x = torch.randn(a.batch, 73, a.dim, requires_grad=True)
    g = geo.hex_graph()
    src, dst, d = (torch.as_tensor(v.copy()) for v in (g.src, g.dst, g.direction))

    def scatter():
        msg = x[:, src] * conv.weight[d]  # (B, E, C)
        return torch.zeros_like(x).index_add_(1, dst, msg) + conv.bias

    # dense: one (73, 73) matrix per channel direction -> (7, 73, 73) adjacency by direction
    adj = torch.zeros(7, 73, 73)
    adj[d, dst, src] = 1.0

    def dense():
        return torch.einsum("knm,bmc,kc->bnc", adj, x, conv.weight) + conv.bias

    ref = conv(x)
    assert torch.allclose(scatter(), ref, atol=1e-5) and torch.allclose(dense(), ref, atol=1e-5)
    res = {}
    for name, fn in (("gather", lambda: conv(x)), ("scatter_index_add", scatter), ("dense_73x73", dense)):
        res[name + "_fwd_bwd_ms"] = 1e3 * best_time(lambda fn=fn: fn().sum().backward(), repeats=10)
    fastest = min(res, key=res.get)
    res["ratio_to_gather"] = {k: round(v / res["gather_fwd_bwd_ms"], 2) for k, v in res.items()}
    write_json(a.out, {"batch": a.batch, "dim": a.dim, **res, "fastest": fastest})


if __name__ == "__main__":
    main()
