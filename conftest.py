"""Shared by the unit tests and the notebooks under nbval (both collected from here).

Under pytest-xdist (README's test command runs one worker per core), each worker and every notebook
kernel it starts computes on one thread: torch's own threads on top of one process per core would
oversubscribe the cores. The notebook kernels also get the numerics settings the committed notebooks
were executed with (``notebooks/execute.py``: PORTABLE_NUMERICS), so that nbval's comparison holds on
any x86-64 CPU, not only on the one that executed them. Only the kernels: the tests' own processes keep
the machine's kernels (under those settings torch.compile's CPU code diverges from eager mode)."""

import importlib.util
import os
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("execute_notebooks", Path(__file__).parent / "notebooks" / "execute.py")
_execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_execute)


def pytest_configure(config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # inherited by the Jupyter kernels nbval starts from this worker
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        import torch

        torch.set_num_threads(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """nbval starts a notebook's kernel while setting up its first cell: the kernel inherits
    PORTABLE_NUMERICS, this process's environment is restored."""
    if item.path.suffix != ".ipynb":
        yield
        return
    saved = {k: os.environ.get(k) for k in _execute.PORTABLE_NUMERICS}
    os.environ.update(_execute.PORTABLE_NUMERICS)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
