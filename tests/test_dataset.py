import numpy as np
import torch

from xecbench.data import EventDataset, Normalizer, RootStream, SimulatedStream, make_loader, write_root


def test_event_dataset_batches(events):
    ds = EventDataset(events)
    batch = next(iter(make_loader(ds, batch_size=16, shuffle=True, seed=1)))
    assert batch["x"].shape == (16, 4760, 2) and batch["x"].dtype == torch.float32
    assert batch["valid"].shape == (16, 4760) and batch["valid"].dtype == torch.bool
    assert batch["time_valid"].dtype == torch.bool and batch["energyTruth"].shape == (16,)
    # the batch is the normalised raw data of the events it names
    idx = batch["event"].numpy()
    x, valid, _ = Normalizer()(events["npho"][idx], events["relative_time"][idx])
    assert torch.equal(batch["x"], x) and torch.equal(batch["valid"], valid)
    again = next(iter(make_loader(ds, batch_size=16, shuffle=True, seed=1)))
    assert torch.equal(again["event"], batch["event"])  # seeded shuffle


def _collect(loader):
    items = {}
    for b in loader:
        for i, e in enumerate(b["event"].tolist()):
            items[e] = b["x"][i]
    return items


def test_simulated_stream_same_events_for_any_worker_count(events):
    one = _collect(make_loader(SimulatedStream(300, seed=11), batch_size=50))
    two = _collect(make_loader(SimulatedStream(300, seed=11), batch_size=50, num_workers=2))
    assert sorted(one) == sorted(two) == list(range(300))
    x, _, _ = Normalizer()(events["npho"], events["relative_time"])
    for e in (0, 255, 256, 299):
        assert torch.equal(one[e], two[e]) and torch.equal(one[e], x[e])


def test_root_stream_equals_in_memory(tmp_path, events):
    path = write_root(tmp_path / "s.root", events)
    streamed = _collect(make_loader(RootStream(path, step_size=64), batch_size=32))
    mem = EventDataset.from_file(path)
    assert len(streamed) == len(mem) == 300
    assert all(torch.equal(streamed[i], mem[i]["x"]) for i in (0, 63, 64, 299))
    assert np.array_equal(mem.tensors["event"].numpy(), np.arange(300))
