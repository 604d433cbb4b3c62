"""torch datasets: one path from simulation or files to batches of network inputs.

Each item is a dict ``{"x": (4760, 2) float32, "valid": (4760,) bool, "time_valid": (4760,) bool,
<truth branches>}``; the default collate stacks them to ``x (B, 4760, 2)``, ``valid (B, 4760)``.

* :class:`EventDataset`: events in memory (a simulated set, a ``.npz`` or a ROOT file).
* :class:`SimulatedStream`: events simulated on the fly, each worker taking whole seeded blocks, so
  the events are the same for any number of workers.
* :class:`RootStream`: a ROOT file read chunk by chunk, for files larger than memory. Under
  :func:`make_loader` it yields whole batches itself (slices of its chunks normalised straight into
  place), not events for the loader to collate one by one.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from .io import NPHO, TIME, check_events, iter_root, load_events
from .normalize import Normalizer
from .shared_batches import SLOT_KEY, SlotRing, SlottedLoader, empty_shared
from .simulate import BLOCK, SimConfig, simulate

RAW_NPHO, RAW_TIME = NPHO, TIME  # the keys of a raw batch (RootStream(normalize=False)): the branch names


def to_items(events: dict[str, np.ndarray], norm: Normalizer) -> dict[str, torch.Tensor]:
    """Raw event dict -> batched tensors ``x (n, 4760, 2)``, ``valid``, ``time_valid`` ``(n, 4760)``
    and the truth arrays ``(n, ...)`` (sharing their memory)."""
    x, valid, time_valid = norm.normalize(events[NPHO], events[TIME])
    out = {"x": x, "valid": valid, "time_valid": time_valid}
    out.update({k: torch.as_tensor(v) for k, v in events.items() if k not in (NPHO, TIME)})
    return out


class EventDataset(Dataset):
    """Events held in memory, normalised once."""

    def __init__(self, events: dict[str, np.ndarray], normalizer: Normalizer | None = None):
        self.n = check_events(events)
        self.normalizer = normalizer or Normalizer()
        self.tensors = to_items(events, self.normalizer)

    @classmethod
    def from_simulation(cls, n_events: int, seed: int = 0, config: SimConfig | None = None, **kwargs) -> EventDataset:
        return cls(simulate(n_events, seed=seed, config=config), **kwargs)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], normalizer: Normalizer | None = None, **read_kwargs
    ) -> EventDataset:
        return cls(load_events(path, **read_kwargs), normalizer)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def _worker_share() -> tuple[int, int]:
    """(this DataLoader worker's index, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def _events_of(chunk: dict[str, np.ndarray], norm: Normalizer) -> Iterator[dict[str, torch.Tensor]]:
    """Normalise a raw chunk once and yield its events one by one."""
    items = to_items(chunk, norm)
    for i in range(len(items["x"])):
        yield {k: v[i] for k, v in items.items()}


class SimulatedStream(IterableDataset):
    """``n_events`` simulated on the fly from ``seed``; worker k of W takes blocks k, k + W, ..."""

    def __init__(
        self,
        n_events: int,
        seed: int = 0,
        config: SimConfig | None = None,
        normalizer: Normalizer | None = None,
    ):
        self.n_events, self.seed = n_events, seed
        self.config = config or SimConfig()
        self.normalizer = normalizer or Normalizer()

    def __len__(self) -> int:
        return self.n_events

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, n_workers = _worker_share()
        n_blocks = -(-self.n_events // BLOCK)
        for block in range(worker, n_blocks, n_workers):
            start = block * BLOCK
            events = simulate(min(BLOCK, self.n_events - start), self.seed, self.config, start=start)
            yield from _events_of(events, self.normalizer)


def _empty_batch(
    chunk: dict[str, np.ndarray],
    batch_size: int,
    normalize: bool = True,
    empty: Callable[..., torch.Tensor] = torch.empty,
) -> dict[str, torch.Tensor]:
    """Uninitialised tensors (made by ``empty``) for a batch of ``batch_size`` events with the keys
    of a raw ``chunk``: ``x (B, C, 2)`` float32, ``valid``, ``time_valid`` ``(B, C)`` bool
    (``normalize=False``: raw ``npho``, ``time`` ``(B, C)`` float32 instead), truth ``(B, ...)``."""
    c = chunk[NPHO].shape[1]
    if normalize:
        out = {
            "x": empty((batch_size, c, 2), dtype=torch.float32),
            "valid": empty((batch_size, c), dtype=torch.bool),
            "time_valid": empty((batch_size, c), dtype=torch.bool),
        }
    else:
        out = {key: empty((batch_size, c), dtype=torch.float32) for key in (RAW_NPHO, RAW_TIME)}
    for k, v in chunk.items():
        if k not in (NPHO, TIME):
            out[k] = empty((batch_size, *v.shape[1:]), dtype=torch.from_numpy(v[:0]).dtype)
    return out


def _new_batch(
    chunk: dict[str, np.ndarray], batch_size: int, normalize: bool, ring: SlotRing | None
) -> tuple[dict[str, torch.Tensor], tuple[int, int] | None]:
    """A batch's tensors and its slot tag (see :mod:`.shared_batches`). In a DataLoader worker the
    batch is built in shared memory, where the loader sends it from (otherwise sending it copies
    every byte once more, as DataLoader's own collate knows): in a reused slot under
    :func:`make_loader`, else fresh."""

    def make(empty: Callable[..., torch.Tensor]) -> dict[str, torch.Tensor]:
        return _empty_batch(chunk, batch_size, normalize, empty)

    if ring is not None:
        return ring.next_batch(make)
    return make(empty_shared if get_worker_info() is not None else torch.empty), None


def normalize_batch(batch: dict[str, torch.Tensor], normalizer: Normalizer) -> dict[str, torch.Tensor]:
    """A raw batch of ``RootStream(..., normalize=False)`` -> the batch it yields by default: ``npho``
    and ``time`` replaced by ``x``, ``valid`` and ``time_valid``, computed where the tensors are.
    Move the raw batch to the GPU first and the normalisation costs the loader nothing; the values
    are the same bits as the loader's own."""
    out = {k: v for k, v in batch.items() if k not in (RAW_NPHO, RAW_TIME)}
    out["x"], out["valid"], out["time_valid"] = normalizer(batch[RAW_NPHO], batch[RAW_TIME])
    return out


def _batches(
    chunks: Iterator[dict[str, np.ndarray]],
    norm: Normalizer,
    batch_size: int,
    drop_last: bool = False,
    normalize: bool = True,
    ring: SlotRing | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Raw chunks -> batches of ``batch_size`` consecutive events (across chunk boundaries), each
    slice of a chunk normalised straight into its rows of the batch (``normalize=False``: copied
    raw): no per-event items and no collation. The last batch holds the remainder (dropped with
    ``drop_last``). ``ring``: the worker's reused slots (:mod:`.shared_batches`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch: dict[str, torch.Tensor] | None = None
    tag: tuple[int, int] | None = None
    filled = 0
    for chunk in chunks:
        n, pos = len(chunk[NPHO]), 0
        while pos < n:
            if batch is None:
                (batch, tag), filled = _new_batch(chunk, batch_size, normalize, ring), 0
            take = min(batch_size - filled, n - pos)
            src, dst = slice(pos, pos + take), slice(filled, filled + take)
            if normalize:
                x, valid, time_valid = batch["x"][dst], batch["valid"][dst], batch["time_valid"][dst]
                norm.normalize_into(chunk[NPHO][src], chunk[TIME][src], x, valid, time_valid)
            else:
                batch[RAW_NPHO].numpy()[dst] = chunk[NPHO][src]
                batch[RAW_TIME].numpy()[dst] = chunk[TIME][src]
            for k in chunk:
                if k not in (NPHO, TIME):
                    batch[k].numpy()[dst] = chunk[k][src]
            filled, pos = filled + take, pos + take
            if filled == batch_size:
                yield _tagged(batch, tag)
                batch = None
        del chunk  # before the next is read (see iter_root)
    if batch is not None and not drop_last:
        yield _tagged({k: v[:filled] for k, v in batch.items()}, tag)


def _tagged(batch: dict[str, torch.Tensor], tag: tuple[int, int] | None) -> dict[str, torch.Tensor]:
    """The batch to send, with its slot tag (a new dict: the slot's own is reused)."""
    return batch if tag is None else {**batch, SLOT_KEY: tag}


class RootStream(IterableDataset):
    """A ROOT file streamed in chunks of ``step_size`` events (read options as :func:`.io.iter_root`).

    ``batch_size=None`` (default): it yields single events, for a DataLoader to collate.
    ``batch_size=B`` (what :func:`make_loader` sets up, through :meth:`batched`): it yields ready
    batches ``{"x": (B, 4760, 2), "valid": (B, 4760), "time_valid": (B, 4760), <truth>: (B, ...)}``,
    the same tensors a DataLoader would collate from its events, several times faster.

    Order: with no DataLoader worker or one, the file's events in order, ``B`` at a time across
    chunk boundaries, the last batch short (or dropped with ``drop_last``). With ``W`` workers,
    worker ``k`` reads only chunks ``k, k + W, ...`` (each event exactly once) and batches its own
    events in order, so its last batch may be short; the loader takes a batch from each worker in
    turn. Both are how a DataLoader batches the single events of this stream. With workers, make
    ``step_size`` a multiple of the file's basket size (``xecbench simulate`` writes baskets of 4096
    events), or a basket that two chunks share is decompressed by two workers.

    Truth: by default the per-event truth branches the file has (energy, positions, ...), without
    the per-sensor ``nphoExpected`` (as large as ``npho``; training never needs it, the evaluation's
    Poisson floor does): ``sensor_truth=True`` adds it, ``truth=[...]`` names the branches.

    ``normalize=False`` (batches only): the batches hold the raw ``npho`` and ``time`` ``(B, 4760)``
    float32 instead of ``x``, ``valid`` and ``time_valid``, and :func:`normalize_batch` makes those
    where the batch goes. Normalising is most of a loader worker's time; on a GPU it is free, so a
    worker that leaves it to the GPU delivers several times the events per second.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        normalizer: Normalizer | None = None,
        *,
        batch_size: int | None = None,
        drop_last: bool = False,
        sensor_truth: bool = False,
        normalize: bool = True,
        **read_kwargs,
    ):
        if not Path(path).is_file():  # here, not in a worker process where the message gets buried
            raise FileNotFoundError(f"RootStream: {path} is not a file")
        self.path, self.read_kwargs = path, {"sensor_truth": sensor_truth, **read_kwargs}
        self.normalizer = normalizer or Normalizer()
        self.batch_size, self.drop_last, self.normalize = batch_size, drop_last, normalize
        self.slot_ring: SlotRing | None = None  # set by SlottedLoader (make_loader) for each pass

    def batched(self, batch_size: int | None, drop_last: bool = False) -> RootStream:
        """A copy of this stream that yields batches of ``batch_size`` events (``None``: events)."""
        out = copy.copy(self)
        out.batch_size, out.drop_last = batch_size, drop_last
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, n_workers = _worker_share()
        chunks = iter_root(self.path, shard=(worker, n_workers), **self.read_kwargs)
        if self.batch_size is not None:
            ring = self.slot_ring
            yield from _batches(chunks, self.normalizer, self.batch_size, self.drop_last, self.normalize, ring)
            return
        if not self.normalize:
            raise ValueError("RootStream(normalize=False) yields batches only: give batch_size (or use make_loader)")
        for chunk in chunks:
            yield from _events_of(chunk, self.normalizer)
            del chunk  # before the next is read (see iter_root)


def make_loader(
    dataset: Dataset,
    batch_size: int = 32,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with a seeded shuffle (map-style datasets only).

    A :class:`RootStream` makes its batches itself (see there): the loader then passes them through
    (``batch_size=None``), and ``num_workers`` processes share the file's chunks."""
    if isinstance(dataset, RootStream):
        return SlottedLoader(
            dataset.batched(batch_size, drop_last),
            batch_size=None,
            num_workers=num_workers,
        )
    g = torch.Generator().manual_seed(seed)
    shuffle = shuffle and not isinstance(dataset, IterableDataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=g,
        drop_last=drop_last,
    )
