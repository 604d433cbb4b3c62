"""Helpers shared by the benchmark scripts: a best-of timer and an atomic JSON writer."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable

import torch

from xecbench.data.io import atomic_path


def best_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Best wall time of ``fn()`` in seconds (best-of is the least noisy on a shared machine)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "torch": torch.__version__,
    }


def write_json(path: str, result: dict) -> None:
    result = {**result, "machine": machine()}
    print(json.dumps(result, indent=2))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
