"""Reading and writing events: ROOT files (uproot) in the format users already have, and ``.npz``.

An *event dict* maps branch names to numpy arrays with one row per event: ``npho`` and
``relative_time`` ``(n, 4760)`` float32 (raw, invalid > 9e9 or NaN) and any truth branches
(``energyTruth``, ``timeTruth``, ``xyzTruth``, ``uvwTruth``, ``emiAng``, ``emiVec``, ``xyzVTX``,
``run``, ``event``). :func:`..simulate.simulate` returns the same form, so one pipeline serves both.

Files whose branches are named differently are read with ``npho_branch=`` / ``time_branch=``; the
arrays come back under the canonical names. Every write goes to a temporary file first and is then
renamed, so a crash never leaves a half-written file in place.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from ..geometry import N_CHANNELS

NPHO, TIME = "npho", "relative_time"
TRUTH_BRANCHES: tuple[str, ...] = (
    "nphoExpected",  # simulation only: each sensor's expected count before the Poisson draw
    "energyTruth",
    "timeTruth",
    "xyzTruth",
    "uvwTruth",
    "emiAng",
    "emiVec",
    "xyzVTX",
    "run",
    "event",
)
# Truth branches with a value per sensor: as large as ``npho`` itself, so a third of the decompression
# of a simulated file. The evaluation's Poisson floor needs ``nphoExpected``; training does not.
SENSOR_TRUTH: tuple[str, ...] = ("nphoExpected",)
# how :func:`write_root` compresses unless told: uproot's default
DEFAULT_COMPRESSION = uproot.ZLIB(1)


def fast_compression(compression: uproot.compression.Compression | None) -> uproot.compression.Compression | None:
    """The codec to write with: ZLIB levels 1-3 through ISA-L (``isal``, one of uproot's ZLIB
    libraries) when it is installed; any other codec or level, or a ZLIB whose ``library`` was chosen,
    as it is.

    The baskets are ordinary zlib streams, declared with the same algorithm and level, so ROOT and
    every zlib reader read them. ISA-L compresses about 5x faster than the standard library's zlib
    at level 1; uproot maps ZLIB levels 1-3 onto ISA-L's 0-1, and at level 1 the baskets of
    simulated events come out about 10 % larger (``benchmarks/bench_inpaint_files.py``). Higher
    levels ask for smaller files, so they stay with the standard library."""
    if (
        not isinstance(compression, uproot.ZLIB)
        or not 1 <= compression.level <= 3
        or "library" in vars(compression)  # chosen by the caller
        or importlib.util.find_spec("isal") is None
    ):
        return compression
    fast = uproot.ZLIB(compression.level)
    fast.library = "isal"
    return fast


class DataFormatError(ValueError):
    """A data file exists but does not hold what the workbench expects."""


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the mode a plain ``open`` would give (``0o666`` less the umask), and temporary files
    that an earlier, killed write to ``path`` left behind are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    """The process's umask (read from /proc where possible: setting it to read it races with threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files ``.<name>.<pid>-*.tmp<suffix>`` of :func:`atomic_path` writes to
    ``path`` whose process is gone (a killed write); returns them."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp{glob.escape(path.suffix)}"):
        pid = tmp.name[len(path.name) + 2 :].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue  # another process may be writing it right now
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has no write in flight to this path: it would have yielded it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def check_events(events: dict[str, np.ndarray], source: str = "events") -> int:
    """Check that an event dict has ``npho`` and ``relative_time`` of shape ``(n, 4760)`` and that
    every array has ``n`` rows; return ``n``."""
    for key in (NPHO, TIME):
        if key not in events:
            raise DataFormatError(f"{source}: missing array {key!r}; found {sorted(events)}")
        a = events[key]
        if a.ndim != 2 or a.shape[1] != N_CHANNELS:
            raise DataFormatError(f"{source}: {key!r} must have shape (n_events, {N_CHANNELS}), got {a.shape}")
    n = events[NPHO].shape[0]
    for key, a in events.items():
        if len(a) != n:
            raise DataFormatError(f"{source}: {key!r} has {len(a)} rows, {NPHO!r} has {n}")
    return n


# ------------------------------------------------------------------------------------------
# ROOT
# ------------------------------------------------------------------------------------------


def _open_tree(path: str | os.PathLike[str], tree: str) -> uproot.TTree:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ROOT file {path} not found")
    if path.stat().st_size == 0:
        raise DataFormatError(f"ROOT file {path} is empty (0 bytes)")
    try:
        f = uproot.open(path)
        names = list(f.keys())
        t = f[tree] if tree in f else None
    except Exception as exc:  # uproot raises several types for damaged files
        raise DataFormatError(f"{path} cannot be read as a ROOT file (damaged?): {_one_line(exc)}") from exc
    if t is None:
        raise DataFormatError(f"{path}: no tree {tree!r}; the file holds {names}")
    if not isinstance(t, uproot.TTree):
        raise DataFormatError(f"{path}: {tree!r} is a {type(t).__name__}, not a TTree")
    return t


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_matrix(a: ak.Array | np.ndarray, path: Path, branch: str, width: int | None) -> np.ndarray:
    """Per-event arrays (fixed-size or jagged) -> ``(n, width)`` numpy; scalars stay ``(n,)``."""
    if isinstance(a, np.ndarray) and a.dtype != object:
        out = a
    else:
        a = ak.Array(a)
        if a.ndim > 1:
            lengths = ak.num(a, axis=1)
            if len(a) and ak.any(lengths != lengths[0]):
                bad = np.unique(ak.to_numpy(lengths))
                raise DataFormatError(
                    f"{path}: branch {branch!r} has per-event lengths {bad.tolist()}, expected"
                    f" {width or 'one length'} for every event"
                )
        out = ak.to_numpy(a)
    if width is not None and (out.ndim != 2 or out.shape[1] != width):
        raise DataFormatError(
            f"{path}: branch {branch!r} must hold {width} values per event, got shape {out.shape[1:]}"
        )
    return out


def _check_range(entry_start: int, entry_stop: int | None) -> None:
    if entry_start < 0:
        raise ValueError(f"entry_start must be >= 0 (the first entry to read), got {entry_start}")
    if entry_stop is not None and entry_stop < 0:
        raise ValueError(f"entry_stop must be >= 0 (the entry to stop before), got {entry_stop}")


def iter_root(
    path: str | os.PathLike[str],
    *,
    tree: str = "tree",
    npho_branch: str = NPHO,
    time_branch: str = TIME,
    truth: Sequence[str] | None = None,
    sensor_truth: bool = True,
    step_size: int = 1000,
    entry_start: int = 0,
    entry_stop: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[dict[str, np.ndarray]]:
    """Yield event dicts of at most ``step_size`` events, so files larger than memory work.

    ``entry_start``, ``entry_stop``: only the entries ``[entry_start, entry_stop)`` of the tree
    (``entry_stop=None``: to the end); nothing outside them is read.

    ``truth``: truth branches to read; ``None`` = those of :data:`TRUTH_BRANCHES` that the file has,
    without the per-sensor ones (:data:`SENSOR_TRUTH`) when ``sensor_truth`` is false. Arrays come
    back under the canonical names ``npho`` and ``relative_time``.

    ``shard=(k, n)``: only chunks ``k, k + n, k + 2n, ...``, where chunk ``j`` holds the entries
    ``entry_start + [j * step_size, (j + 1) * step_size)``; the other chunks are not read at all. This is how the
    ``n`` workers of a stream split a file: each event once, each chunk decompressed by one worker
    (only a basket that straddles two chunks is decompressed by both; a ``step_size`` that is a
    multiple of the file's cluster size avoids that).
    """
    path = Path(path)
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard}")
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")
    _check_range(entry_start, entry_stop)
    t = _open_tree(path, tree)
    keys = set(t.keys())
    for b in (npho_branch, time_branch, *(truth or ())):
        if b not in keys:
            raise DataFormatError(f"{path}: tree {tree!r} has no branch {b!r}; its branches are {sorted(keys)}")
    if truth is None:
        truth = [b for b in TRUTH_BRANCHES if b in keys and (sensor_truth or b not in SENSOR_TRUTH)]
    if t.num_entries == 0:
        raise DataFormatError(f"{path}: tree {tree!r} has no events")
    branches = [npho_branch, time_branch, *truth]
    # numpy straight from uproot where every branch has a fixed size per event (the common case, and
    # no awkward round trip); awkward where some branch is jagged, to check its lengths
    fixed = all(isinstance(t[b].interpretation, uproot.interpretation.numerical.AsDtype) for b in branches)
    library = "np" if fixed else "ak"
    stop = t.num_entries if entry_stop is None else min(entry_stop, t.num_entries)
    if entry_start >= stop:
        return
    if count == 1:
        # one reader: uproot's iterate keeps a basket that straddles two chunks for the next one
        chunks = t.iterate(branches, step_size=step_size, entry_start=entry_start, entry_stop=stop, library=library)
    else:
        starts = range(entry_start + index * step_size, stop, count * step_size)
        # no array_cache: uproot's default keeps up to 100 MB of what it read, and a chunk is read once
        chunks = (
            t.arrays(branches, entry_start=a, entry_stop=min(a + step_size, stop), library=library, array_cache=None)
            for a in starts
        )
    rename = {npho_branch: NPHO, time_branch: TIME}
    while True:
        # drop this generator's hold on the last chunk before reading the next: two chunks alive at
        # once (about 160 MB at 4096 events) is fresh memory for every chunk, and faulting it in cost
        # as much as the rest of uproot's reading (benchmarks/bench_data.py)
        chunk = None
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except Exception as exc:  # a truncated or damaged file fails here, with uproot's own types
            raise DataFormatError(
                f"{path}: reading tree {tree!r} failed, the file may be truncated or damaged: {_one_line(exc)}"
            ) from exc
        yield {rename.get(b, b): _branch_array(chunk[b], path, b, sensors=b in rename) for b in branches}


def _branch_array(a: ak.Array | np.ndarray, path: Path, branch: str, sensors: bool) -> np.ndarray:
    """One branch of a chunk as numpy: a per-sensor branch ``(n, 4760)`` float32, any other as it is."""
    if not sensors:
        return _as_matrix(a, path, branch, None)
    return _as_matrix(a, path, branch, N_CHANNELS).astype(np.float32, copy=False)


def read_root(path: str | os.PathLike[str], **kwargs) -> dict[str, np.ndarray]:
    """Read a ROOT file, or the entries ``[entry_start, entry_stop)`` of it, into one event dict
    (see :func:`iter_root` for the options)."""
    chunks = list(iter_root(path, **kwargs))
    if not chunks:
        start, stop, tree = kwargs.get("entry_start", 0), kwargs.get("entry_stop"), kwargs.get("tree", "tree")
        shard = kwargs.get("shard", (0, 1))
        which = "" if shard == (0, 1) else f" for shard {shard[0]} of {shard[1]} (step_size {kwargs.get('step_size')})"
        raise DataFormatError(
            f"{path}: no events in entries [{start}, {'end' if stop is None else stop}){which} of tree {tree!r},"
            f" which holds {count_events(path, tree)}"
        )
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def count_events(path: str | os.PathLike[str], tree: str = "tree") -> int:
    """The number of events in a ``.root`` file's tree (read from its header) or an ``.npz`` file."""
    suffix = Path(path).suffix
    if suffix == ".root":
        return int(_open_tree(path, tree).num_entries)
    if suffix == ".npz":
        try:  # the npho array's header: the shape without reading the arrays
            with zipfile.ZipFile(path) as z, z.open(f"{NPHO}.npy") as f:
                fmt = np.lib.format
                header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
                return int(header(f)[0][0])
        except Exception:  # not an npz of ours: loading it names the problem
            return len(load_npz(path)[NPHO])
    raise DataFormatError(f"{path}: unknown data format {suffix!r}; use .root or .npz")


def write_root(
    path: str | os.PathLike[str],
    events: dict[str, np.ndarray] | Iterator[dict[str, np.ndarray]],
    *,
    tree: str = "tree",
    compression: uproot.compression.Compression | None = DEFAULT_COMPRESSION,
) -> Path:
    """Write events as a TTree of fixed-size branches (``npho[4760]``, ``xyzTruth[3]``, ...).

    ``events``: one event dict, or an iterator of them (written chunk by chunk, one basket per
    branch and chunk). Atomic. ``compression``: the baskets' codec, uproot's default ZLIB level 1
    unless told (:data:`DEFAULT_COMPRESSION`). ``uproot.LZ4(1)``, which ROOT reads too, decompresses
    about five times faster for a file 12 % larger on simulated events (``benchmarks/bench_data.py``);
    ``None`` writes the baskets uncompressed. ZLIB is written through :func:`fast_compression`.
    """
    path = Path(path)
    chunks = iter([events]) if isinstance(events, dict) else iter(events)
    with atomic_path(path) as tmp, uproot.recreate(tmp, compression=fast_compression(compression)) as f:
        first = next(chunks)
        check_events(first, str(path))
        out = f.mktree(tree, {k: (v.dtype, v.shape[1:]) if v.ndim > 1 else v.dtype for k, v in first.items()})
        out.extend(first)
        for chunk in chunks:
            check_events(chunk, str(path))
            out.extend(chunk)
    return path


# ------------------------------------------------------------------------------------------
# npz cache
# ------------------------------------------------------------------------------------------


def save_npz(path: str | os.PathLike[str], events: dict[str, np.ndarray]) -> Path:
    """Save an event dict as an uncompressed ``.npz`` (fast to load). Atomic."""
    path = Path(path)
    check_events(events, str(path))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **events)
    return path


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load an event dict saved by :func:`save_npz`, checking its shapes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file {path} not found")
    try:
        with np.load(path) as z:
            events = {k: z[k] for k in z.files}
    except Exception as exc:
        raise DataFormatError(f"{path} cannot be read as an .npz file: {exc}") from exc
    check_events(events, str(path))
    return events


def load_events(
    path: str | os.PathLike[str],
    *,
    entry_start: int = 0,
    entry_stop: int | None = None,
    sensor_truth: bool = True,
    **read_kwargs,
) -> dict[str, np.ndarray]:
    """Read ``.root`` or ``.npz`` by the file's suffix: the events ``[entry_start, entry_stop)``
    (default all), without the per-sensor truth (:data:`SENSOR_TRUTH`) when ``sensor_truth`` is
    false. Of a ROOT file nothing else is read; ``read_kwargs`` go to :func:`read_root` (branch names,
    ``tree``, ``step_size``)."""
    suffix = Path(path).suffix
    if suffix == ".root":
        return read_root(
            path, entry_start=entry_start, entry_stop=entry_stop, sensor_truth=sensor_truth, **read_kwargs
        )
    if suffix == ".npz":
        _check_range(entry_start, entry_stop)
        events = load_npz(path)
        n, rows = len(events[NPHO]), slice(entry_start, entry_stop)
        part = rows.indices(n) != (0, n, 1)  # copies of a part, so that the whole file can be freed
        events = {k: v[rows].copy() if part else v for k, v in events.items() if sensor_truth or k not in SENSOR_TRUTH}
        if len(events[NPHO]) == 0:
            stop = "end" if entry_stop is None else entry_stop
            raise DataFormatError(f"{path}: no events in entries [{entry_start}, {stop}) of the {n} it holds")
        return events
    raise DataFormatError(f"{path}: unknown data format {suffix!r}; use .root or .npz")
