"""torch datasets: one path from simulation or files to batches of network inputs.

Each item is a dict ``{"x": (4760, 2) float32, "valid": (4760,) bool, "time_valid": (4760,) bool,
<truth branches>}``; the default collate stacks them to ``x (B, 4760, 2)``, ``valid (B, 4760)``.

* :class:`EventDataset`: events in memory (a simulated set, a ``.npz`` or a ROOT file).
* :class:`SimulatedStream`: events simulated on the fly, each worker taking whole seeded blocks, so
  the events are the same for any number of workers.
* :class:`RootStream`: a ROOT file read chunk by chunk, for files larger than memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from .io import NPHO, TIME, check_events, iter_root, load_events
from .normalize import Normalizer
from .simulate import BLOCK, SimConfig, simulate


def to_items(events: dict[str, np.ndarray], norm: Normalizer) -> dict[str, torch.Tensor]:
    """Raw event dict -> batched tensors ``x``, ``valid``, ``time_valid`` and truth."""
    x, valid, time_valid = norm(events[NPHO], events[TIME])
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


class RootStream(IterableDataset):
    """A ROOT file streamed in chunks of ``step_size`` events (options as :func:`.io.iter_root`)."""

    def __init__(self, path: str | os.PathLike[str], normalizer: Normalizer | None = None, **read_kwargs):
        self.path, self.read_kwargs = path, read_kwargs
        self.normalizer = normalizer or Normalizer()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, n_workers = _worker_share()
        for k, chunk in enumerate(iter_root(self.path, **self.read_kwargs)):
            if k % n_workers == worker:
                yield from _events_of(chunk, self.normalizer)


def make_loader(
    dataset: Dataset,
    batch_size: int = 32,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with a seeded shuffle (map-style datasets only)."""
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
