"""Data: the toy detector simulation, ROOT/npz I/O, normalisation and torch datasets."""

from .dataset import EventDataset, RootStream, SimulatedStream, make_loader, normalize_batch, to_items
from .io import (
    TRUTH_BRANCHES,
    DataFormatError,
    atomic_path,
    count_events,
    iter_root,
    load_events,
    load_npz,
    read_root,
    save_npz,
    write_root,
)
from .normalize import NPHO_SCHEMES, Normalizer, raw_invalid
from .simulate import INVALID, SimConfig, dead_channel_map, simulate

__all__ = [
    "INVALID",
    "NPHO_SCHEMES",
    "TRUTH_BRANCHES",
    "DataFormatError",
    "EventDataset",
    "Normalizer",
    "RootStream",
    "normalize_batch",
    "SimConfig",
    "SimulatedStream",
    "atomic_path",
    "count_events",
    "dead_channel_map",
    "iter_root",
    "load_events",
    "load_npz",
    "make_loader",
    "raw_invalid",
    "read_root",
    "save_npz",
    "simulate",
    "to_items",
    "write_root",
]
