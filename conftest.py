"""Shared by the unit tests and the notebooks under nbval (both collected from here).

Under pytest-xdist (README's test command runs one worker per core), each worker and every notebook
kernel it starts computes on one thread: torch's own threads on top of one process per core would
oversubscribe the cores."""

import os


def pytest_configure(config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # inherited by the Jupyter kernels nbval starts from this worker
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        import torch

        torch.set_num_threads(1)
