import os
import subprocess
import sys
import weakref

import awkward as ak
import numpy as np
import pytest
import uproot

from xecbench.data import (
    DataFormatError,
    RootStream,
    count_events,
    io,
    iter_root,
    load_events,
    load_npz,
    read_root,
    save_npz,
    write_root,
)


def test_root_round_trip_and_chunks(tmp_path, events):
    path = write_root(tmp_path / "sim.root", events)
    back = read_root(path)
    assert set(back) == set(events)
    for k in events:
        assert np.array_equal(back[k], events[k]) and back[k].dtype == events[k].dtype, k
    chunks = list(iter_root(path, step_size=64))
    assert [len(c["npho"]) for c in chunks] == [64, 64, 64, 64, 44]
    assert np.array_equal(np.concatenate([c["npho"] for c in chunks]), events["npho"])
    # the file is a real TTree with fixed-size branches
    t = uproot.open(path)["tree"]
    assert t["npho"].typename == "float[4760]" and t.num_entries == 300


def test_chunked_write_equals_one_write(tmp_path, events):
    parts = ({k: v[i : i + 100] for k, v in events.items()} for i in range(0, 300, 100))
    write_root(tmp_path / "chunked.root", parts)
    back = read_root(tmp_path / "chunked.root")
    assert np.array_equal(back["relative_time"], events["relative_time"])


def test_other_branch_names_and_jagged_arrays(tmp_path, events):
    # a file as another experiment's code might write it: vectors, other names, written by uproot directly
    path = tmp_path / "jagged.root"
    with uproot.recreate(path) as f:
        f.mktree("T", {"nphoArr": "var * float32", "timeArr": "var * float32", "energyTruth": "float32"}).extend(
            {
                "nphoArr": ak.Array(events["npho"][:5].tolist()),
                "timeArr": ak.Array(events["relative_time"][:5].tolist()),
                "energyTruth": events["energyTruth"][:5],
            }
        )
    back = read_root(path, tree="T", npho_branch="nphoArr", time_branch="timeArr")
    assert np.array_equal(back["npho"], events["npho"][:5])
    assert np.array_equal(back["relative_time"], events["relative_time"][:5])
    assert set(back) == {"npho", "relative_time", "energyTruth"}


def test_npz_round_trip_and_load_events(tmp_path, events):
    path = save_npz(tmp_path / "cache.npz", events)
    back = load_npz(path)
    for k in events:
        assert np.array_equal(back[k], events[k]), k
    assert np.array_equal(load_events(path)["npho"], events["npho"])
    with pytest.raises(DataFormatError, match="unknown data format '.h5'"):
        load_events(tmp_path / "x.h5")


def _small(events, n=3):
    return {k: v[:n] for k, v in events.items()}


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.root"):
        read_root(tmp_path / "nothere.root")
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        load_npz(tmp_path / "nothere.npz")


def test_empty_and_corrupt_files(tmp_path):
    (tmp_path / "empty.root").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"empty.root is empty"):
        read_root(tmp_path / "empty.root")
    (tmp_path / "junk.root").write_bytes(b"this is not ROOT" * 100)
    with pytest.raises(DataFormatError, match="junk.root cannot be read as a ROOT file"):
        read_root(tmp_path / "junk.root")
    (tmp_path / "junk.npz").write_bytes(b"zip? no")
    with pytest.raises(DataFormatError, match="junk.npz cannot be read"):
        load_npz(tmp_path / "junk.npz")


def test_missing_tree_and_branch_are_named(tmp_path, events):
    path = write_root(tmp_path / "a.root", _small(events))
    with pytest.raises(DataFormatError, match=r"a.root: no tree 'events'.*tree"):
        read_root(path, tree="events")
    with pytest.raises(DataFormatError, match=r"a.root: tree 'tree' has no branch 'nphoArr'.*'npho'"):
        read_root(path, npho_branch="nphoArr")
    with pytest.raises(DataFormatError, match="no branch 'muTruth'"):
        read_root(path, truth=["muTruth"])


def test_wrong_length_is_named(tmp_path, events):
    path = tmp_path / "short.root"
    with uproot.recreate(path) as f:
        f.mktree("tree", {"npho": (np.float32, (4759,)), "relative_time": (np.float32, (4759,))}).extend(
            {"npho": events["npho"][:2, :4759], "relative_time": events["relative_time"][:2, :4759]}
        )
    with pytest.raises(
        DataFormatError, match=r"short.root: branch 'npho' must hold 4760 values per event, got shape \(4759,\)"
    ):
        read_root(path)
    ragged = tmp_path / "ragged.root"
    with uproot.recreate(ragged) as f:
        f.mktree("tree", {"npho": "var * float32", "relative_time": "var * float32"}).extend(
            {"npho": ak.Array([[1.0] * 4760, [1.0] * 10]), "relative_time": ak.Array([[1.0] * 4760, [1.0] * 4760])}
        )
    with pytest.raises(DataFormatError, match=r"branch 'npho' has per-event lengths \[10, 4760\], expected 4760"):
        read_root(ragged)
    with pytest.raises(DataFormatError, match=r"'npho' must have shape \(n_events, 4760\), got \(2, 4759\)"):
        save_npz(tmp_path / "bad.npz", {"npho": np.zeros((2, 4759)), "relative_time": np.zeros((2, 4759))})


def test_tree_without_events(tmp_path):
    path = tmp_path / "none.root"
    with uproot.recreate(path) as f:
        f.mktree("tree", {"npho": (np.float32, (4760,)), "relative_time": (np.float32, (4760,))})
    with pytest.raises(DataFormatError, match="none.root: tree 'tree' has no events"):
        read_root(path)


def test_writes_are_atomic(tmp_path, events, monkeypatch):
    path = write_root(tmp_path / "keep.root", _small(events))
    before = path.read_bytes()

    def chunks():
        yield _small(events)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_root(path, chunks())
    assert path.read_bytes() == before  # the old file survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.root"]  # no temporary left behind
    with pytest.raises(ValueError):
        with io.atomic_path(tmp_path / "x.txt") as tmp:
            tmp.write_text("half")
            raise ValueError("boom")
    assert not (tmp_path / "x.txt").exists()


def test_a_truncated_root_file_is_named(tmp_path, events):
    path = write_root(tmp_path / "whole.root", events)
    data = path.read_bytes()
    cut = tmp_path / "cut.root"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=r"cut.root: reading tree 'tree' failed, the file may be truncated"):
        read_root(cut)
    with pytest.raises(DataFormatError, match="cut.root"):
        next(iter_root(cut, step_size=64))


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_users_umask(tmp_path, events, umask, mode):
    old = os.umask(umask)
    try:
        assert io.current_umask() == umask
        paths = [write_root(tmp_path / "a.root", _small(events)), save_npz(tmp_path / "a.npz", _small(events))]
        with io.atomic_path(tmp_path / "m.json") as tmp:
            tmp.write_text("{}")
        paths.append(tmp_path / "m.json")
    finally:
        os.umask(old)
    for p in paths:
        assert p.stat().st_mode & 0o777 == mode, p


def test_temporaries_of_a_killed_write_are_removed(tmp_path, events):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".a.npz.{dead.pid}-x1y2.tmp.npz"
    ours = tmp_path / f".a.npz.{os.getpid()}-z3.tmp.npz"
    live = tmp_path / f".a.npz.{os.getppid()}-w4.tmp.npz"  # another process still writing
    other = tmp_path / f".b.npz.{dead.pid}-v5.tmp.npz"  # another target
    for p in (stale, ours, live, other):
        p.write_bytes(b"half")
    save_npz(tmp_path / "a.npz", _small(events))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.npz", live.name, other.name])


def test_shards_split_the_chunks_without_reading_the_others(tmp_path, events):
    path = write_root(tmp_path / "sim.root", events)
    whole = list(iter_root(path, step_size=64))
    shards = [list(iter_root(path, step_size=64, shard=(k, 3))) for k in range(3)]
    # shard k holds chunks k, k + 3, ... of the unsharded read, the same arrays
    assert [len(s) for s in shards] == [2, 2, 1]
    for k, shard in enumerate(shards):
        for chunk, want in zip(shard, whole[k::3], strict=True):
            assert chunk.keys() == want.keys() and all(np.array_equal(chunk[b], want[b]) for b in want)
    assert list(iter_root(path, step_size=64, entry_stop=100, shard=(1, 2)))[0]["npho"].shape == (36, 4760)
    with pytest.raises(ValueError, match="shard must be"):
        next(iter_root(path, shard=(2, 2)))


def test_truth_branches_per_sensor_only_when_asked(tmp_path, events):
    path = write_root(tmp_path / "sim.root", _small(events))
    assert "nphoExpected" in next(iter_root(path))  # read_root's default: everything the file has
    lean = next(iter_root(path, sensor_truth=False))
    assert "nphoExpected" not in lean and "energyTruth" in lean and "uvwTruth" in lean
    assert "nphoExpected" in next(iter_root(path, sensor_truth=False, truth=["nphoExpected"]))


@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_write_root_with_another_codec(tmp_path, events, codec):
    compression = uproot.LZ4(1) if codec == "lz4" else None
    path = write_root(tmp_path / f"{codec}.root", _small(events), compression=compression)
    back = read_root(path)
    assert all(np.array_equal(back[k], v) for k, v in _small(events).items())
    assert uproot.open(path).file.compression == compression


def test_zlib_is_written_through_isal_as_ordinary_zlib(tmp_path, events):
    """ZLIB baskets go through ISA-L (fast_compression), declared as ZLIB of the same level, and are
    plain zlib streams: Python's own zlib decompresses them, and the file reads back exactly."""
    import zlib

    fast = io.fast_compression(uproot.ZLIB(1))
    assert isinstance(fast, uproot.ZLIB) and fast.level == 1 and fast.library == "isal"
    data = _small(events)["npho"].astype(">f4").tobytes()
    packed = fast.compress(data)
    assert zlib.decompress(packed) == data and packed != zlib.compress(data, 1)  # ISA-L's own stream
    assert io.fast_compression(uproot.ZLIB(0)).library == "zlib"  # level 0: uncompressed, as uproot does it
    assert io.fast_compression(uproot.ZLIB(6)).library == "zlib"  # higher levels ask for smaller files
    chosen = uproot.ZLIB(1)
    chosen.library = "zlib"
    assert io.fast_compression(chosen) is chosen  # the caller's choice stands
    assert io.fast_compression(uproot.LZ4(1)) == uproot.LZ4(1) and io.fast_compression(None) is None
    path = write_root(tmp_path / "z.root", _small(events))
    stdlib = write_root(tmp_path / "stdlib.root", _small(events), compression=chosen)
    assert uproot.open(path).file.compression == uproot.ZLIB(1)  # what the file declares
    assert path.stat().st_size != stdlib.stat().st_size  # ISA-L's streams, not the standard library's
    for p in (path, stdlib):
        back = read_root(p)
        assert all(np.array_equal(back[k], v) for k, v in _small(events).items())


@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
def test_a_chunk_is_let_go_before_the_next_is_read(tmp_path, events, monkeypatch, shard):
    # two chunks alive at once is fresh memory for every chunk (about 160 MB at 4096 events): once
    # the caller has dropped a chunk, nothing may hold its arrays while uproot reads the next
    path = write_root(tmp_path / "sim.root", events)
    last: list[weakref.ref] = []  # the arrays uproot returned last
    alive_at_read: list[int] = []  # how many of them were alive when the next read began

    def watch(chunk: dict) -> dict:
        last[:] = [weakref.ref(a) for a in chunk.values()]
        return chunk

    def alive() -> int:
        return sum(r() is not None for r in last)

    real_iterate, real_arrays = uproot.TTree.iterate, uproot.TTree.arrays

    def iterate(self, *args, **kwargs):  # the one-reader path
        chunks = real_iterate(self, *args, **kwargs)
        while True:
            alive_at_read.append(alive())
            chunk = next(chunks, None)
            if chunk is None:
                return
            yield watch(chunk)
            del chunk

    def arrays(self, *args, **kwargs):  # the sharded path
        alive_at_read.append(alive())
        return watch(real_arrays(self, *args, **kwargs))

    monkeypatch.setattr(uproot.TTree, "iterate", iterate)
    monkeypatch.setattr(uproot.TTree, "arrays", arrays)
    chunks = iter_root(path, step_size=64, shard=shard)
    while next(chunks, None) is not None:  # each chunk dropped at once
        pass
    assert len(alive_at_read) == (6 if shard == (0, 1) else 2)  # 5 chunks and the end; chunks 1 and 3
    if shard == (0, 1):  # and a stream of single events (a DataLoader collates them) reads the same way
        events_of = iter(RootStream(path, step_size=64))
        while next(events_of, None) is not None:
            pass
        assert len(alive_at_read) == 12
    assert alive_at_read == [0] * len(alive_at_read)


def test_a_range_of_entries_is_read_and_nothing_else(tmp_path, events, uproot_reads):
    path = write_root(tmp_path / "sim.root", events)
    npz = save_npz(tmp_path / "sim.npz", events)
    assert count_events(path) == count_events(npz) == 300
    asked = uproot_reads
    part = read_root(path, entry_start=70, entry_stop=200, step_size=64)
    assert asked == [(70, 200)]
    assert part.keys() == events.keys() and all(np.array_equal(part[k], events[k][70:200]) for k in events)
    # shards count their chunks from entry_start: [70, 134), [134, 198), [198, 262), [262, 300)
    odd = list(iter_root(path, step_size=64, entry_start=70, shard=(1, 2)))
    assert [len(c["npho"]) for c in odd] == [64, 38]
    assert np.array_equal(np.concatenate([c["npho"] for c in odd]), events["npho"][np.r_[134:198, 262:300]])
    # load_events: the same rows from either format, the per-sensor truth only when asked
    for f in (path, npz):
        tail = load_events(f, entry_start=250, sensor_truth=False)
        assert set(tail) == set(events) - {"nphoExpected"}
        assert all(np.array_equal(tail[k], events[k][250:]) for k in tail)
        with pytest.raises(DataFormatError, match=r"no events in entries \[300, end\) of .*300"):
            load_events(f, entry_start=300)
        with pytest.raises(ValueError, match="entry_start must be >= 0"):
            load_events(f, entry_start=-1)
