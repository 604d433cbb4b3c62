import weakref

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from xecbench.data import (
    EventDataset,
    Normalizer,
    RootStream,
    SimulatedStream,
    make_loader,
    normalize_batch,
    write_root,
)
from xecbench.data.dataset import _batches, _new_batch


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


# ------------------------------------------------------------------------------------------
# RootStream's batches: against a slow reference built event by event
# ------------------------------------------------------------------------------------------


def _reference_events(events: dict, idx) -> dict[str, torch.Tensor]:
    """The items a stream must deliver for the events ``idx``, built the slow way: each event
    normalised on its own by the reference normaliser, then stacked."""
    norm = Normalizer()
    xs, valid, time_valid = zip(*(norm(events["npho"][i], events["relative_time"][i]) for i in idx), strict=True)
    out = {"x": torch.stack(xs), "valid": torch.stack(valid), "time_valid": torch.stack(time_valid)}
    for k in ("energyTruth", "xyzTruth", "event", "run"):
        out[k] = torch.as_tensor(events[k][list(idx)])
    return out


def _same(batch: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> bool:
    """Equal keys present in ``ref``, shapes, dtypes and bits (x compared as int32 patterns)."""
    bits = lambda t: t.contiguous().view(torch.int32) if t.dtype == torch.float32 else t  # noqa: E731
    return all(batch[k].dtype == v.dtype and torch.equal(bits(batch[k]), bits(v)) for k, v in ref.items())


def _chunk_order(n_events: int, step: int, batch: int, workers: int) -> list[list[int]]:
    """The event ids of each batch, in the order the loader hands them out, by the documented rule:
    chunk k of ``step`` events goes to worker k % W, each worker batches its own events in order (its
    last batch short), the loader takes a batch from each worker in turn."""
    own = [[] for _ in range(workers)]
    for k, start in enumerate(range(0, n_events, step)):
        own[k % workers].extend(range(start, min(start + step, n_events)))
    per_worker = [[ids[i : i + batch] for i in range(0, len(ids), batch)] for ids in own]
    order = []
    for j in range(max(len(b) for b in per_worker)):
        order += [b[j] for b in per_worker if j < len(b)]
    return order


def test_root_stream_batches_equal_the_per_event_reference(tmp_path, events):
    path = write_root(tmp_path / "s.root", events)
    batches = list(make_loader(RootStream(path, step_size=64), batch_size=32))
    # the file in order, 32 at a time across the 64-event chunks, the last batch short (300 = 9 * 32 + 12)
    assert [len(b["x"]) for b in batches] == [32] * 9 + [12]
    for j, b in enumerate(batches):
        assert _same(b, _reference_events(events, range(32 * j, min(32 * j + 32, 300)))), j
    # no per-sensor truth unless asked (training does not need it), the event-level truth is there
    event_truth = {k for k in events if k not in ("npho", "relative_time", "nphoExpected")}
    assert set(batches[0]) == {"x", "valid", "time_valid", *event_truth}
    assert len(list(make_loader(RootStream(path, step_size=64), batch_size=32, drop_last=True))) == 9


def test_raw_batches_normalised_where_they_go_equal_the_loaders_normalised_batches(tmp_path, events):
    """RootStream(normalize=False) leaves the normalisation to the consumer (a GPU): the raw batches
    hold the file's values, and normalize_batch makes of them the bits the default loader delivers."""
    path = write_root(tmp_path / "s.root", events)
    raw = list(make_loader(RootStream(path, step_size=64, normalize=False), batch_size=32, num_workers=2))
    ids = [b["event"].tolist() for b in raw]
    assert ids == _chunk_order(300, 64, 32, 2)
    event_truth = {k for k in events if k not in ("npho", "relative_time", "nphoExpected")}
    for b, idx in zip(raw, ids):
        assert set(b) == {"npho", "relative_time", *event_truth}
        assert np.array_equal(b["npho"].numpy(), events["npho"][idx], equal_nan=True)
        assert np.array_equal(b["relative_time"].numpy(), events["relative_time"][idx], equal_nan=True)
        got = normalize_batch(b, Normalizer())
        assert "npho" not in got and _same(got, _reference_events(events, idx))
    with pytest.raises(ValueError, match="batches only"):
        next(iter(RootStream(path, normalize=False)))


def test_root_stream_two_workers_each_event_exactly_once(tmp_path, events):
    path = write_root(tmp_path / "s.root", events)
    batches = list(make_loader(RootStream(path, step_size=64), batch_size=32, num_workers=2))
    ids = [b["event"].tolist() for b in batches]
    assert sorted(i for b in ids for i in b) == list(range(300))  # each event once
    assert ids == _chunk_order(300, 64, 32, 2)  # worker 0: chunks 0, 2, 4 (172 events), worker 1: 1, 3
    for b, want in zip(batches, ids, strict=True):
        assert _same(b, _reference_events(events, want))


def test_root_stream_batches_equal_what_a_dataloader_collates(tmp_path, events):
    # the stream's own batches are exactly the DataLoader's collation of its single events
    path = write_root(tmp_path / "s.root", events)
    for workers in (0, 2):
        ours = list(make_loader(RootStream(path, step_size=100), batch_size=48, num_workers=workers))
        collated = list(DataLoader(RootStream(path, step_size=100), batch_size=48, num_workers=workers))
        assert len(ours) == len(collated)
        assert all(set(a) == set(b) and _same(a, b) for a, b in zip(ours, collated, strict=True))


def test_root_stream_truth_branches_on_request(tmp_path, events):
    path = write_root(tmp_path / "s.root", events)
    with_sensor = next(iter(make_loader(RootStream(path, sensor_truth=True), batch_size=8)))
    assert torch.equal(with_sensor["nphoExpected"], torch.as_tensor(events["nphoExpected"][:8]))
    named = next(iter(make_loader(RootStream(path, truth=["nphoExpected", "energyTruth"]), batch_size=8)))
    assert set(named) == {"x", "valid", "time_valid", "nphoExpected", "energyTruth"}
    assert "nphoExpected" not in next(iter(make_loader(RootStream(path), batch_size=8)))


class _BatchInWorker(IterableDataset):
    """Yields whether the batch tensors a worker builds are in shared memory (and in the main process)."""

    def __init__(self, chunk):
        self.chunk = chunk

    def __iter__(self):
        for normalize in (True, False):
            batch, _ = _new_batch(self.chunk, 4, normalize, ring=None)
            yield {k: torch.tensor(v.is_shared()) for k, v in batch.items()}


def test_a_worker_builds_its_batches_in_shared_memory(events):
    """In a DataLoader worker, batches are allocated in shared memory, so sending them to the main
    process copies nothing (what DataLoader's own collate does); in the main process they are not."""
    chunk = {k: v[:8] for k, v in events.items()}
    in_worker = list(DataLoader(_BatchInWorker(chunk), batch_size=None, num_workers=1))
    assert len(in_worker) == 2 and all(bool(flag) for b in in_worker for flag in b.values())
    assert not any(v.is_shared() for v in _new_batch(chunk, 4, True, ring=None)[0].values())


@pytest.mark.parametrize("normalize", [True, False])
def test_batching_lets_a_chunk_go_before_asking_for_the_next(events, normalize):
    # as iter_root (tests/test_io.py): a chunk the batcher still holds while the next is read doubles
    # the memory in use and makes every chunk fresh memory
    last: list[weakref.ref] = []
    alive_at_read = []

    def chunks():
        for start in range(0, 300, 64):
            alive_at_read.append(sum(r() is not None for r in last))
            chunk = {k: v[start : start + 64].copy() for k, v in events.items()}
            last[:] = [weakref.ref(a) for a in chunk.values()]
            yield chunk
            del chunk

    batches = list(_batches(chunks(), Normalizer(), batch_size=48, normalize=normalize))
    assert sum(len(b["valid" if normalize else "npho"]) for b in batches) == 300
    assert alive_at_read == [0] * 5
