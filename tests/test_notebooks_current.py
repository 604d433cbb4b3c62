"""The committed notebooks were executed with the code they ship with (``notebooks/execute.py``)."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("execute_notebooks", REPO / "notebooks" / "execute.py")
execute = importlib.util.module_from_spec(spec)
spec.loader.exec_module(execute)


def test_every_notebook_was_executed_with_this_code_and_these_cells():
    import nbformat

    current = execute.fingerprint()
    notebooks = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))
    assert len(notebooks) >= 8
    ran = {p.name: (current, execute.cells_hash(nbformat.read(p, as_version=4))) for p in notebooks}
    stale = [p.name for p in notebooks if execute.stamp_of(p) != ran[p.name]]
    assert not stale, (
        f"{len(stale)} notebook(s) were executed with other code or other cells than this checkout's "
        f"({', '.join(stale)}): run `python notebooks/execute.py` and commit them"
    )


def test_the_cells_hash_follows_the_code_cells_only():
    cells = [{"cell_type": "code", "source": "x = 1\n", "outputs": []}, {"cell_type": "markdown", "source": "# a"}]
    nb = {"cells": cells}
    first = execute.cells_hash(nb)
    cells[1]["source"] = "# another title"  # prose and outputs are not what ran
    cells[0]["outputs"] = [{"text": "1"}]
    assert execute.cells_hash(nb) == first
    cells[0]["source"] = ["x = 2\n"]  # a cell's source, also as a list of lines
    assert execute.cells_hash(nb) != first


def test_the_fingerprint_follows_code_configs_and_requirements_only(tmp_path):
    (tmp_path / "xecbench" / "configs").mkdir(parents=True)
    (tmp_path / "xecbench" / "__pycache__").mkdir()
    files = {
        "xecbench/model.py": "x = 1\n",
        "xecbench/configs/a.yaml": "lr: 1\n",
        "requirements.txt": "torch==2.13.0\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    first = execute.fingerprint(tmp_path)
    assert len(first) == 16 and int(first, 16) >= 0
    # caches, notebooks and run outputs are not code
    (tmp_path / "xecbench" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\x00")
    (tmp_path / "xecbench" / "__pycache__" / "stale.py").write_text("y = 2\n")
    (tmp_path / "notes.md").write_text("text\n")
    assert execute.fingerprint(tmp_path) == first
    for name, text in files.items():  # any change to any of them changes it
        (tmp_path / name).write_text(text + "# edit\n")
        changed = execute.fingerprint(tmp_path)
        assert changed != first, name
        (tmp_path / name).write_text(text)
    assert execute.fingerprint(tmp_path) == first
    # a renamed file is another tree
    (tmp_path / "xecbench" / "model.py").rename(tmp_path / "xecbench" / "layers.py")
    assert execute.fingerprint(tmp_path) != first


def test_the_notebook_numerics_do_not_depend_on_the_instruction_set_mkl_picks(tmp_path):
    """Under ``PORTABLE_NUMERICS`` (the settings nbval's kernels and execute.py run with), MKL's
    vectorised sqrt, exp, log, erf and its matrix products give the same bits whichever instruction set
    it is allowed (``MKL_ENABLE_INSTRUCTIONS``): the stand-in, on one machine, for another CPU. Without
    the settings these differ on an AVX-512 machine (measured: the simulated events themselves)."""
    import os
    import subprocess
    import sys

    code = (
        "import hashlib, torch\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.rand(512, 4760, generator=g) * 100 + 0.01\n"
        "parts = [x.sqrt(), x.log(), (x / 100).exp(), torch.erf(x / 50), torch.tanh(x / 50), x[:, :64] @ x[:64]]\n"
        "print(hashlib.sha256(b''.join(p.contiguous().numpy().tobytes() for p in parts)).hexdigest())\n"
    )
    script = tmp_path / "digest_of_mkl_ops.py"
    script.write_text(code)
    digests = set()
    for isa in ("AVX2", "AVX512"):
        env = {**os.environ, **execute.PORTABLE_NUMERICS, "MKL_ENABLE_INSTRUCTIONS": isa}
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests
