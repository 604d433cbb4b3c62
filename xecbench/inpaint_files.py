"""Fill the dead channels of real data: a trained inpainter over ROOT files, files out in the same format.

:func:`inpaint_root` streams each input tree in chunks (memory independent of the file size) and writes
a tree with the same branches, types and values, except that the npho (and the time, where the model
was trained to predict it) of the sensors to fill are the model's predictions in raw units. It adds

* a branch ``inpainted`` (bool ``[4760]`` per event): True where a value was replaced, and
* a string ``xecbench_inpaint`` in the file (a ``TObjString`` holding JSON): the checkpoint (path,
  SHA-256, epoch, step, weights), the fill mode and the xecbench version.

Which sensors to fill (``fill``): ``"invalid"`` (npho flagged invalid in the file: > 9e9 or NaN),
``"dead"`` (the ids of a dead-channel map, whatever the file holds there) or ``"both"``.
:func:`inpaint_arrays` is the same for arrays in memory. Outputs are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import awkward as ak
import numpy as np
import torch
import uproot
from tqdm.auto import tqdm

from .data.io import (
    NPHO,
    TIME,
    DataFormatError,
    _as_matrix,
    _one_line,
    _open_tree,
    atomic_path,
    fast_compression,
)
from .data.normalize import raw_invalid
from .data.simulate import dead_channel_map
from .geometry import N_CHANNELS
from .memory import keep_freed_memory
from .nn.deploy import RawInpainter

FILL_MODES = ("invalid", "dead", "both")


class InpaintArgumentError(ValueError):
    """An argument of :func:`inpaint_root` that cannot be used (the CLI exits with status 2)."""


FLAG_BRANCH = "inpainted"
_ONE_THREAD_PER_OPERATOR = threading.Lock()  # held while inpaint_arrays runs with torch at 1 thread
IDENTITY_KEY = "xecbench_inpaint"


def load_inpainter(
    checkpoint: str | os.PathLike[str], weights: str | None = None, device: str = "cpu", state: dict | None = None
) -> tuple[RawInpainter, dict]:
    """A :class:`.nn.deploy.RawInpainter` from an inpainting (or MAE) checkpoint, and its identity
    (what :func:`inpaint_root` writes into the file). ``state``: the checkpoint, if already read."""
    from .train import build_normalizer, load_checkpoint, load_trained

    state = load_checkpoint(checkpoint) if state is None else state
    model, cfg, which = load_trained(str(checkpoint), weights, state)
    if cfg.model.task not in ("inpaint", "mae"):
        raise DataFormatError(f"{checkpoint} holds a {cfg.model.task} model; inpainting needs an inpaint or mae one")
    fill_time = cfg.model.channel_weights[1] > 0  # a model trained without a time loss keeps the times
    inpainter = RawInpainter(model, build_normalizer(cfg.data), fill_time=fill_time).to(device).eval()
    return inpainter, {**checkpoint_identity(checkpoint, state, which), "time_filled": fill_time}


def checkpoint_identity(checkpoint: str | os.PathLike[str], state: dict, weights: str) -> dict:
    """What identifies a model in the files made with it: path, SHA-256, task, epoch, step, weights."""
    from . import __version__
    from .train import config_from_checkpoint

    return {
        "checkpoint": str(Path(checkpoint).resolve()),
        "sha256": sha256_of(checkpoint),
        "task": config_from_checkpoint(state).model.task,
        "epoch": state["epoch"],
        "step": state["step"],
        "weights": weights,
        "xecbench": __version__,
    }


def sha256_of(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fill_mask(npho: np.ndarray, fill: str = "invalid", dead_channels: Sequence[int] | None = None) -> np.ndarray:
    """Which sensors to fill, ``(n, 4760)`` bool, from raw ``npho (n, 4760)`` (see the module docstring).
    ``dead_channels``: ids for ``"dead"``/``"both"`` (default: the packaged map)."""
    if fill not in FILL_MODES:
        raise InpaintArgumentError(f"fill must be one of {FILL_MODES}, got {fill!r}")
    mask = np.zeros(npho.shape, dtype=bool)
    if fill in ("invalid", "both"):
        mask |= raw_invalid(npho).numpy()
    if fill in ("dead", "both"):
        ids = np.asarray(dead_channel_map() if dead_channels is None else dead_channels, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= N_CHANNELS):
            bad = ids[(ids < 0) | (ids >= N_CHANNELS)].tolist()
            raise InpaintArgumentError(f"dead channel ids must be in 0..{N_CHANNELS - 1}, got {bad}")
        mask[:, ids] = True
    return mask


def inpaint_arrays(
    inpainter: RawInpainter,
    npho: np.ndarray,
    time: np.ndarray,
    fill: np.ndarray,
    batch_size: int = 64,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``npho``, ``time`` and ``fill`` ``(n, 4760)`` -> filled npho and time ``(n, 4760)`` float32
    (unchanged where ``fill`` is False).

    On the CPU the batches run on ``threads`` threads at once (default: torch's thread count), each
    operator single-threaded. The model's operators are too small to keep several cores busy one at
    a time (measured on 2 cores: 1.65x the events/s of torch's own threads), and with one thread per
    operator the result does not depend on the number of threads (the batch size may change the
    last digits)."""
    if not isinstance(inpainter, RawInpainter):
        raise TypeError(
            f"inpaint_arrays needs a RawInpainter, got {type(inpainter).__name__} "
            "(load_inpainter returns (inpainter, identity): unpack it)"
        )
    if batch_size < 1 or (threads is not None and threads < 1):
        raise ValueError(f"batch_size and threads must be >= 1, got {batch_size} and {threads}")
    n = len(npho) if np.ndim(npho) == 2 else "n"
    for name, a in (("npho", npho), ("time", time), ("fill", fill)):
        if a.ndim != 2 or a.shape[1] != N_CHANNELS or len(a) != len(npho):
            raise ValueError(f"{name} must have shape ({n}, {N_CHANNELS}) (events, sensors), got {a.shape}")
    device = next(inpainter.parameters()).device
    out_npho = np.array(npho, dtype=np.float32)
    out_time = np.array(time, dtype=np.float32)

    def fill_batch(start: int) -> None:
        sl = slice(start, start + batch_size)
        if not fill[sl].any():
            return
        sensors = torch.from_numpy(np.stack([out_npho[sl], out_time[sl]], axis=-1)).to(device)
        with torch.inference_mode():
            filled = inpainter(sensors, torch.from_numpy(fill[sl]).to(device)).cpu().numpy()
        out_npho[sl], out_time[sl] = filled[..., 0], filled[..., 1]  # batches write disjoint rows

    starts = range(0, len(npho), batch_size)
    if device.type != "cpu":
        for start in starts:
            fill_batch(start)
        return out_npho, out_time
    # torch's thread count is process-wide: one call at a time sets it to 1 and restores it, and other
    # torch work in this process meanwhile runs single-threaded too
    with _ONE_THREAD_PER_OPERATOR:
        threads = threads or torch.get_num_threads()
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(fill_batch, starts))
        finally:
            torch.set_num_threads(before)
    return out_npho, out_time


def inpaint_root(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    fill: str = "invalid",
    dead_channels: Sequence[int] | None = None,
    tree: str = "tree",
    npho_branch: str = NPHO,
    time_branch: str = TIME,
    step_size: int = 2000,
    batch_size: int = 64,
    weights: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> list[Path]:
    """Inpaint ROOT files; returns the files written.

    ``out`` ending in ``.root``: every input's events, in order, into that one file (the inputs must
    have the same branches). Otherwise ``out`` is a folder that gets one file per input, of the same
    name. See the module docstring for ``fill`` and what the outputs hold.
    """
    paths = [Path(p) for p in ([inputs] if isinstance(inputs, str | os.PathLike) else inputs)]
    if not paths:
        raise InpaintArgumentError("no input files given")
    out = Path(out)
    if fill not in FILL_MODES:
        raise InpaintArgumentError(f"fill must be one of {FILL_MODES}, got {fill!r}")
    if step_size < 1 or batch_size < 1:
        raise InpaintArgumentError(f"step_size and batch_size must be >= 1, got {step_size} and {batch_size}")
    trees = [_open_tree(p, tree) for p in paths]  # every input checked before anything is written
    for p, t in zip(paths, trees):
        for b in (npho_branch, time_branch):
            if b not in t.keys():
                raise DataFormatError(f"{p}: tree {tree!r} has no branch {b!r}; its branches are {sorted(t.keys())}")
        if FLAG_BRANCH in t.keys():
            raise DataFormatError(f"{p}: tree {tree!r} already has a branch {FLAG_BRANCH!r} (inpainted before?)")
        if t.num_entries == 0:
            raise DataFormatError(f"{p}: tree {tree!r} has no events")
    keep_freed_memory()
    inpainter, identity = load_inpainter(checkpoint, weights, device)
    identity.update(fill=fill, npho_branch=npho_branch, time_branch=time_branch)
    if fill != "invalid":
        ids = dead_channel_map() if dead_channels is None else dead_channels
        identity["dead_channels"] = [int(i) for i in ids]
    if out.suffix == ".root":
        groups = [(out, list(zip(paths, trees)))]
    else:
        names = [p.name for p in paths]
        if len(set(names)) != len(names):
            raise InpaintArgumentError(
                f"inputs share a file name, so a folder --out {out} cannot hold them: give a .root file"
            )
        groups = [(out / p.name, [(p, t)]) for p, t in zip(paths, trees)]
    for target, members in groups:
        if any(target.resolve() == p.resolve() for p, _ in members):
            raise InpaintArgumentError(f"the output {target} is also an input: write elsewhere")
    total = sum(t.num_entries for t in trees)
    bar = tqdm(total=total, unit="event", desc="inpaint", disable=not progress, smoothing=0.1)
    written = []
    try:
        for target, members in groups:
            _write_group(
                target,
                members,
                inpainter,
                identity,
                fill,
                dead_channels,
                tree,
                npho_branch,
                time_branch,
                step_size,
                batch_size,
                bar,
            )
            written.append(target)
    finally:
        bar.close()
    return written


def _layout(t: uproot.TTree, path: Path) -> tuple[list[str], dict[str, str]]:
    """The branches to copy (counters are written with their arrays) and each jagged branch's counter."""
    counters = {}
    for b in t.branches:
        count = getattr(b, "count_branch", None)
        if count is not None:
            counters[b.name] = count.name
    names = [b.name for b in t.branches if b.name not in set(counters.values())]
    for b in t.branches:
        if b.branches:
            raise DataFormatError(f"{path}: branch {b.name!r} is split into sub-branches; only flat trees are copied")
    return names, counters


def _write_group(target, members, inpainter, identity, fill, dead_channels, tree, npho_b, time_b, step, batch, bar):
    first_path, first_tree = members[0]
    names, counters = _layout(first_tree, first_path)
    types = {b.name: b.typename for b in first_tree.branches}
    for p, t in members[1:]:
        other = {b.name: b.typename for b in t.branches}
        if other != types:
            diff = sorted(set(other.items()) ^ set(types.items()))
            raise DataFormatError(f"{p}: its branches differ from {first_path}'s ({diff}); write to a folder instead")
    compression = fast_compression(getattr(first_tree.file, "compression", None) or uproot.ZLIB(1))
    # fixed-size and scalar branches only (no counters, no std::vector): read as numpy, several times
    # faster than awkward arrays
    plain = all(isinstance(b.interpretation, uproot.AsDtype) for b in first_tree.branches if b.name in names)
    library = "np" if plain and not counters else "ak"
    with atomic_path(target) as tmp, uproot.recreate(tmp, compression=compression) as f:
        out_tree = None
        # one chunk is compressed and written in a second thread while the next one is inpainted
        # (zlib releases the GIL); one at a time, in order
        with ThreadPoolExecutor(1) as writer:
            pending = None
            for p, t in members:
                for chunk in _read_ahead(_chunks(t, p, names, step, library)):
                    n = len(chunk[names[0]])
                    npho = _as_matrix(chunk[npho_b], p, npho_b, N_CHANNELS)
                    time = _as_matrix(chunk[time_b], p, time_b, N_CHANNELS)
                    mask = fill_mask(npho, fill, dead_channels)
                    new_npho, new_time = inpaint_arrays(inpainter, npho, time, mask, batch)
                    arrays = {k: chunk[k] for k in names}
                    # replaced values in the branch's own dtype; the others are the file's, untouched
                    arrays[npho_b] = _like(np.where(mask, new_npho.astype(npho.dtype), npho), chunk[npho_b])
                    if inpainter.fill_time:
                        arrays[time_b] = _like(np.where(mask, new_time.astype(time.dtype), time), chunk[time_b])
                    arrays[FLAG_BRANCH] = mask
                    if out_tree is None:
                        branch_types = {k: _branch_type(v) for k, v in arrays.items()}
                        counter = lambda name: counters.get(name, "n" + name)  # noqa: E731
                        out_tree = f.mktree(tree, branch_types, counter_name=counter)
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(_extend, out_tree, arrays, p, tree, target, bar, n)
            if pending is not None:
                pending.result()
        f[IDENTITY_KEY] = json.dumps({**identity, "inputs": [str(p) for p, _ in members]})


def _extend(out_tree, arrays: dict, path: Path, tree: str, target: Path, bar, n: int) -> None:
    try:
        out_tree.extend(arrays)
    except Exception as exc:
        raise DataFormatError(f"{path}: writing tree {tree!r} to {target} failed: {_one_line(exc)}") from exc
    bar.update(n)


def _chunks(t: uproot.TTree, path: Path, names: list[str], step: int, library: str = "ak"):
    it = t.iterate(names, step_size=step, library=library)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except Exception as exc:
            raise DataFormatError(f"{path}: reading failed, the file may be truncated: {_one_line(exc)}") from exc


def _read_ahead(chunks: Iterator[dict]) -> Iterator[dict]:
    """The chunks of ``chunks``, each next one read in a second thread while the caller inpaints the
    one before (uproot's decompression releases the GIL): the reading overlaps the model, one chunk
    ahead (about 4 % more events/s on 2 cores)."""
    with ThreadPoolExecutor(1) as reader:
        ahead = reader.submit(next, chunks, None)
        while (chunk := ahead.result()) is not None:
            ahead = reader.submit(next, chunks, None)
            yield chunk


def _like(values: np.ndarray, original: ak.Array) -> ak.Array | np.ndarray:
    """``values (n, 4760)`` (in the branch's dtype) in the original branch's layout: fixed-size or jagged."""
    if not isinstance(original, np.ndarray) and str(ak.type(original).content).startswith("var"):
        return ak.from_regular(ak.Array(values), axis=1)
    return values


def _branch_type(a) -> object:
    """The type to declare for a branch: numpy ``(dtype, shape)`` or the awkward per-event type."""
    if isinstance(a, np.ndarray):
        return (a.dtype, a.shape[1:]) if a.ndim > 1 else a.dtype
    return ak.type(a).content
