import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from xecbench.data import simulate  # noqa: E402


@pytest.fixture(scope="session")
def events():
    """300 simulated events (crosses a 256-event block boundary)."""
    return simulate(300, seed=11)


@pytest.fixture
def uproot_reads(monkeypatch):
    """The ``(entry_start, entry_stop)`` that uproot's ``TTree.iterate`` is asked for, in order: what a
    test of reading only the needed events watches."""
    import uproot

    asked: list[tuple[int, int]] = []
    real_iterate = uproot.TTree.iterate

    def iterate(self, *args, **kwargs):
        asked.append((kwargs["entry_start"], kwargs["entry_stop"]))
        return real_iterate(self, *args, **kwargs)

    monkeypatch.setattr(uproot.TTree, "iterate", iterate)
    return asked
