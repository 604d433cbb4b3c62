"""Shared by the unit tests and the notebooks under nbval (both collected from here).

Under pytest-xdist (README's test command runs one worker per core), each worker and every notebook
kernel it starts computes on one thread: torch's own threads on top of one process per core would
oversubscribe the cores. The kernels also get the numerics settings the committed notebooks were
executed with (``notebooks/execute.py``: PORTABLE_NUMERICS), so that nbval's comparison holds on any
x86-64 CPU, not only on the one that executed them."""

import importlib.util
import os
from pathlib import Path

_spec = importlib.util.spec_from_file_location("execute_notebooks", Path(__file__).parent / "notebooks" / "execute.py")
_execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_execute)


def pytest_configure(config) -> None:
    # inherited by the xdist workers and the Jupyter kernels nbval starts (read when they load torch)
    os.environ.update(_execute.PORTABLE_NUMERICS)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
