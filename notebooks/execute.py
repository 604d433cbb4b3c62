"""Re-execute the notebooks with the code of this checkout and stamp each with that code's fingerprint.

    python notebooks/execute.py                       # all notebooks, in order (about 14 minutes, one thread each)
    python notebooks/execute.py notebooks/02_*.ipynb  # some

Each notebook runs top to bottom in a fresh kernel, in its own folder and with the numerics settings
of the test run (:data:`PORTABLE_NUMERICS`, as nbval runs it), and is written back only if every cell
succeeded. Its metadata then records :func:`fingerprint`, a hash of
the package's code, configs and pinned requirements, and :func:`cells_hash`, a hash of its own code
cells; ``tests/test_notebooks_current.py`` fails when a committed notebook's stamp differs from the
checkout's, so no committed output comes from older code or from cells edited since. Change the
package or a cell, re-run this, commit the notebooks with the change.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
STAMP = "xecbench"  # notebook metadata key: {"code": fingerprint(), "cells": cells_hash(nb)}

# The same bits on any x86-64 CPU with AVX2. Without these, a notebook prints other digits on an Intel
# AVX-512, an AMD EPYC and an Intel AVX2 machine, even for the simulated events themselves: MKL picks
# its kernels, and so its rounding, by the processor's vendor and instruction set (for matrix products
# and for the vectorised sqrt, exp, log, erf and tanh that ATen hands to it), and oneDNN's
# convolutions and ATen's own kernels are compiled per instruction set. MKL's conditional numerical
# reproducibility (COMPATIBLE: the same results on Intel and compatible processors), oneDNN and ATen
# held to their AVX2 kernels, one thread each. Measured here: with them, a tiny MAE's weights after four
# steps, the simulated events and the normalised inputs are the same bits whichever instruction set MKL
# is told to use (MKL_ENABLE_INSTRUCTIONS), and without them they are not; training runs about 1.3x
# slower. They act when a process loads torch: this script and the test run (conftest.py) set them for
# the notebook kernels they start, and only there: with them, torch.compile's CPU code (inductor) gave
# other results than eager mode here (tests/test_train.py, tests/test_nn_models.py).
PORTABLE_NUMERICS = {
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def code_files(root: Path = REPO) -> list[Path]:
    """What a notebook's outputs depend on: the package's Python files, its configs and data files,
    and the pinned requirements (caches and compiled files are not code)."""
    package = root / "xecbench"
    files = [p for p in package.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".txt")]
    files = [p for p in files if "__pycache__" not in p.parts]
    return sorted([*files, root / "requirements.txt"])


def fingerprint(root: Path = REPO) -> str:
    """sha256 over the paths (relative to ``root``) and contents of :func:`code_files`, 16 hex digits."""
    h = hashlib.sha256()
    for path in code_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cells_hash(nb: dict) -> str:
    """sha256 over a notebook's code-cell sources, 16 hex digits (what it ran, not what it printed)."""
    h = hashlib.sha256()
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            h.update(source.encode() + b"\0")
    return h.hexdigest()[:16]


def stamp_of(path: Path) -> tuple[str | None, str | None]:
    """``(code fingerprint, cells hash)`` a committed notebook was executed with (None where missing)."""
    import nbformat

    stamp = nbformat.read(path, as_version=4).metadata.get(STAMP, {})
    return stamp.get("code"), stamp.get("cells")


def execute(path: Path, timeout: int = 1800) -> float:
    """Run ``path`` in place, written only if every cell succeeded and the code did not change
    meanwhile; returns the seconds it took."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    code = fingerprint()
    start = time.perf_counter()
    where = {"metadata": {"path": str(path.parent)}}  # the kernel's working folder
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources=where).execute()
    if fingerprint() != code:
        raise RuntimeError(f"{path.name}: the code changed while it ran; not written, run it again")
    nb.metadata[STAMP] = {"code": code, "cells": cells_hash(nb)}
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"execute.py: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    spec = importlib.util.find_spec("xecbench")
    if spec is None or not Path(spec.origin).resolve().is_relative_to(REPO):
        print(f"execute.py: this interpreter imports xecbench from {spec and spec.origin}, not from {REPO}: "
              f"run it with the checkout's environment (pip install --no-deps -e .)", file=sys.stderr)
        return 2
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.update(PORTABLE_NUMERICS)  # inherited by the kernels, as under the test run
    for path in paths:
        print(f"{path.name}: {execute(path):.0f} s", flush=True)
    print(f"stamped with code fingerprint {fingerprint()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
