import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from xecbench.data import simulate  # noqa: E402


@pytest.fixture(scope="session")
def events():
    """300 simulated events (crosses a 256-event block boundary)."""
    return simulate(300, seed=11)
