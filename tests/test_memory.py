"""keep_freed_memory: the memory that a training step frees is reused by the next step instead of
being faulted in again (in child processes: the setting is for the whole process, for good)."""

import os
import subprocess
import sys

import pytest

import xecbench.memory as memory

# three tiny-MAE training steps (batch 32) after three to warm up: the page faults they cost
CHILD = """
import resource, torch
from xecbench.memory import keep_freed_memory
print(keep_freed_memory())
from xecbench.nn import XECMAE
torch.manual_seed(0)
torch.set_num_threads(1)
mae = XECMAE()
x = torch.randn(32, 4760, 2) * 0.1
valid = torch.ones(32, 4760, dtype=torch.bool)
def step():
    mae(x, mae.draw_masks(valid, valid)).loss.backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _child(keep: bool) -> tuple[str, int]:
    env = {**os.environ, "XECBENCH_KEEP_FREED_MEMORY": "1" if keep else "0"}
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, env=env)
    kept, faults = out.stdout.split()
    return kept, int(faults)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in():
    kept, faults = _child(keep=True)
    off, faults_off = _child(keep=False)
    # measured here: a few with it, 60,000-100,000 (a quarter to half a GB of fresh pages) without
    assert kept == "True" and off == "False"
    assert faults < 10_000 and faults_off > 30_000, (faults, faults_off)


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("XECBENCH_KEEP_FREED_MEMORY", "0")
    monkeypatch.setattr(memory, "_done", False)
    assert memory.keep_freed_memory() is False
