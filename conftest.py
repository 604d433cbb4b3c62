"""Shared by the unit tests and the notebooks under nbval (both collected from here).

Under pytest-xdist (README's test command runs one worker per core), each worker and every notebook
kernel it starts computes on one thread: torch's own threads on top of one process per core would
oversubscribe the cores. The long items (the notebooks and the browser test, a minute or more each)
run first, so the many short unit tests fill the workers' gaps at the end instead of one worker
finishing a notebook alone."""

import os


def pytest_configure(config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # inherited by the Jupyter kernels nbval starts from this worker
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items) -> None:
    def long(item) -> bool:
        path = item.path.as_posix()
        return path.endswith(".ipynb") or "/tests/browser/" in path

    items.sort(key=lambda item: not long(item))  # stable: the order within each group is kept
