"""Batches from DataLoader workers in reused shared-memory slots (xecbench/data/shared_batches.py):
the batches a consumer holds must stay the file's events however many later batches reuse the slots,
and a consumer that never copies out must not stall the worker for good."""

import pytest
import torch
from torch.utils.data import DataLoader

from xecbench.data import RootStream, make_loader, shared_batches, write_root
from xecbench.data.shared_batches import SLOT_KEY, SlotRing


def _bits(batch: dict) -> dict:
    """Each tensor as comparable bits (float32 as int32: NaN equals NaN)."""
    return {k: v.contiguous().view(torch.int32) if v.dtype == torch.float32 else v for k, v in batch.items()}


def _equal(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        set(x) == set(y) and all(torch.equal(_bits(x)[k], _bits(y)[k]) for k in x) for x, y in zip(a, b)
    )


@pytest.fixture(scope="module")
def path(tmp_path_factory, events):
    return write_root(tmp_path_factory.mktemp("slots") / "s.root", events)


@pytest.mark.parametrize("normalize", [True, False])
def test_held_batches_survive_the_reuse_of_their_slots(path, normalize):
    """38 batches through 4 slots, all kept: each equals the batch built in the training process."""
    stream = RootStream(path, step_size=64, normalize=normalize)
    reference = list(make_loader(stream, batch_size=8))  # no worker: ordinary memory, no slots
    loader = make_loader(stream, batch_size=8, num_workers=1)
    held = list(loader)
    assert loader.slotted_batches == len(held) == 38  # every batch came through a slot (300 = 37 * 8 + 4)
    assert _equal(held, reference)
    assert all(SLOT_KEY not in b and not any(v.is_shared() for v in b.values()) for b in held)


def test_two_workers_and_one_slot_each(path, monkeypatch):
    """With one slot per worker each batch waits for the copy of the one before: the strictest reuse,
    against the same loader building every batch in fresh memory (the same order of batches)."""
    monkeypatch.setattr(shared_batches, "SLOTS", 1)
    stream = RootStream(path, step_size=64)
    fresh = list(DataLoader(stream.batched(16), batch_size=None, num_workers=2))
    loader = make_loader(stream, batch_size=16, num_workers=2)
    held = list(loader)
    assert loader.slotted_batches == len(held) and _equal(held, fresh)


def test_an_abandoned_pass_leaves_the_next_one_whole(path):
    stream = RootStream(path, step_size=64)
    loader = make_loader(stream, batch_size=32, num_workers=1)
    first = next(iter(loader))  # its workers stop with their pass
    again = list(loader)
    assert _equal([first], again[:1]) and _equal(again, list(make_loader(stream, batch_size=32)))


def test_a_consumer_that_never_copies_gets_fresh_batches_after_the_wait(path):
    """Under a plain DataLoader nothing releases the slots: after them the worker waits ``wait_s``
    and falls back to fresh memory; no batch is overwritten."""
    stream = RootStream(path, step_size=64).batched(32)
    stream.slot_ring = SlotRing(torch.zeros(1, dtype=torch.int64).share_memory_(), slots=2, wait_s=0.05)
    held = list(DataLoader(stream, batch_size=None, num_workers=1))
    tags = [b.pop(SLOT_KEY, None) for b in held]  # (worker, batch number), a list once through the loader
    assert tags == [[0, 0], [0, 1]] + [None] * 8
    stream.slot_ring = None
    assert _equal(held, list(make_loader(RootStream(path, step_size=64), batch_size=32)))
