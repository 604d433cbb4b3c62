"""Batches that DataLoader workers build in a few reused shared-memory slots instead of fresh ones.

A worker sends a CPU tensor to the training process through shared memory. Built in a fresh
segment for every batch (as DataLoader's own collation does), each batch's pages are allocated,
zeroed and faulted in anew: on the 2-core machine here that is about 45 us per event, more than the
reading itself (``benchmarks/bench_data.py``). Here each worker instead fills ``SLOTS`` batches in
turn, allocated once, and the training process, on receiving a batch, copies it out into its own
memory (``keep_freed_memory`` makes that memory reused too) and tells the worker the slot is free.

The handshake is one shared counter per worker: how many of its slotted batches the training process
has copied out. The worker's batch ``j`` goes to slot ``j % SLOTS`` once batch ``j - SLOTS`` has
been copied. A DataLoader keeps at most ``prefetch_factor`` (2) batches in flight per worker, so
with ``SLOTS = 4`` the worker does not wait in practice; should it wait longer than ``wait_s``
(a consumer that never copies, e.g. the stream under a plain DataLoader), it falls back to a fresh
segment for that batch: never a deadlock, never a batch overwritten while someone reads it.

* :class:`SlotRing`: the worker's side (which memory the next batch goes into).
* :class:`SlottedLoader`: the training process's side, a DataLoader that copies out and releases.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, get_worker_info

SLOTS = 4  # batches per worker: prefetch_factor (2) in flight, one being copied, one spare
SLOT_KEY = "_slot"  # (worker, batch number): added by the worker, removed by SlottedLoader


def empty_shared(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in shared memory."""
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


class SlotRing:
    """The reuse of ``SLOTS`` batch buffers per worker, coordinated by ``copied`` ``(num_workers,)``
    int64 in shared memory (made by :class:`SlottedLoader` for each pass over the data).

    ``next_batch(make)`` returns ``(batch, tag)``: ``make(empty_shared)`` builds a batch's tensors
    (the first ``SLOTS`` times, and on fallback); ``tag`` is the ``(worker, j)`` to put under
    ``SLOT_KEY``, or None for a batch in fresh memory that needs no release."""

    def __init__(self, copied: torch.Tensor, slots: int = SLOTS, wait_s: float = 10.0):
        self.copied, self.slots, self.wait_s = copied, slots, wait_s
        self.buffers: list[dict[str, torch.Tensor]] = []
        self.issued = 0  # slotted batches handed out by this worker

    def next_batch(
        self, make: Callable[[Callable[..., torch.Tensor]], dict[str, torch.Tensor]]
    ) -> tuple[dict[str, torch.Tensor], tuple[int, int] | None]:
        info = get_worker_info()
        if info is None:  # in the training process nothing is sent: ordinary memory
            return make(torch.empty), None
        j = self.issued
        if j < self.slots:
            self.buffers.append(make(empty_shared))
        elif not self._wait_copied(info.id, j - self.slots + 1):
            return make(empty_shared), None
        self.issued += 1
        return self.buffers[j % self.slots], (info.id, j)

    def _wait_copied(self, worker: int, n: int) -> bool:
        """Whether the training process has copied ``n`` of this worker's slotted batches (waiting
        up to ``wait_s``)."""
        deadline = time.monotonic() + self.wait_s
        while int(self.copied[worker]) < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(20e-6)
        return True


class SlottedLoader(DataLoader):
    """A DataLoader over a dataset with a ``slot_ring(copied)`` method (a batched
    :class:`~xecbench.data.RootStream`): each pass gives its workers a fresh handshake counter, and
    every batch they send in a slot is copied into the training process's memory, then released.
    The batches are the dataset's own, key for key; only where their memory lives changes."""

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.num_workers == 0:
            yield from super().__iter__()
            return
        # a new counter per pass: workers of an abandoned earlier pass keep counting on theirs
        copied = torch.zeros(self.num_workers, dtype=torch.int64).share_memory_()
        self.dataset.slot_ring = SlotRing(copied, SLOTS)
        # the slots as received: kept, they stay mapped here (a slot sent again is not mapped anew)
        received: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.slotted_batches = 0
        try:
            for batch in super().__iter__():
                tag = batch.pop(SLOT_KEY, None)
                if tag is not None:
                    worker, j = tag
                    received[worker, j % SLOTS] = batch
                    batch = {k: v.clone() for k, v in batch.items()}
                    copied[worker] += 1  # batches of one worker arrive in its order
                    self.slotted_batches += 1
                yield batch
        finally:
            self.dataset.slot_ring = None
