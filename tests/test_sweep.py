import csv
import json

import nbformat
import pytest

from xecbench.cli import main
from xecbench.sweep import parse_values, run_sweep, summarize


def _notebook(path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 1\nscale = 2.0\nout_dir = '.'")
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import json, pathlib\n"
        "if x == 'bad':\n    raise ValueError('x must be a number')\n"
        "pathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'y': x * scale, 'note': 'ok'}))"
    )
    nb.cells = [params, body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_parse_values():
    assert parse_values("1e-3,3,rope,true") == [0.001, 3, "rope", True]


@pytest.mark.slow
def test_sweep_runs_skips_reports_and_summarizes(tmp_path, capsys):
    nb = _notebook(tmp_path / "toy.ipynb")
    out = tmp_path / "sweep"
    res = run_sweep(nb, {"x": [1, 3, "bad"], "scale": [2.0]}, out, timeout=120)
    assert [r.status for r in res] == ["done", "done", "failed"]
    assert res[1].metrics["y"] == 6.0
    assert "ValueError: x must be a number" in res[2].error
    assert (out / "x=1,scale=2.0" / "toy.ipynb").is_file()
    again = run_sweep(nb, {"x": [1, 3], "scale": [2.0]}, out, timeout=120)
    assert [r.status for r in again] == ["skipped", "skipped"]
    csv_path, png = summarize(out)
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["x"], float(r["y"])) for r in rows] == [("1", 2.0), ("3", 6.0)]
    assert "note" not in rows[0]  # only numeric metrics are tabulated
    assert png.read_bytes()[:4] == b"\x89PNG"
    # the command line reports the failed point and exits non-zero
    with pytest.raises(SystemExit):
        main(["sweep", str(nb), "-p", "x", "2,bad", "--out", str(out)])
    text = capsys.readouterr().out
    assert "1 run, 0 skipped, 1 failed" in text and "ValueError: x must be a number" in text
    assert json.loads((out / "x=2" / "metrics.json").read_text())["y"] == 4.0


def test_summarize_without_points(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished sweep points"):
        summarize(tmp_path)
