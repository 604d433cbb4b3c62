import csv
import json
import math

import nbformat
import pytest

from xecbench.cli import main
from xecbench.sweep import default_metric, parse_values, run_sweep, summarize


def _notebook(path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 1\nscale = 2.0\nout_dir = '.'")
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import json, pathlib, time\n"
        "if x == 'bad':\n    raise ValueError('x must be a number')\n"
        "if x == 'slow':\n    time.sleep(60)\n"
        "# what a trainer with run_dir=out_dir leaves: never taken for the notebook's result\n"
        "pathlib.Path(out_dir, 'metrics.json').write_text(json.dumps([{'kind': 'epoch', 'epoch': 1}]))\n"
        "y = (0 if isinstance(x, str) else x) * scale\n"
        "pathlib.Path(out_dir, 'result.json').write_text(json.dumps({'epoch': 3, 'y': y, 'note': 'ok'}))"
    )
    late = nbformat.v4.new_code_cell("if x == 'late':\n    raise RuntimeError('failed after writing results')")
    nb.cells = [params, body, late]
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
    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(nb), "-p", "x", "2,bad", "--out", str(out)])
    assert exc.value.code == 1
    captured = capsys.readouterr()
    assert "1 run, 0 skipped, 1 failed" in captured.out and "ValueError: x must be a number" in captured.out
    assert captured.err == "xecbench sweep: 1 of 2 points failed (listed above)\n"
    assert json.loads((out / "x=2" / "result.json").read_text())["y"] == 4.0


@pytest.mark.slow
def test_a_timeout_or_a_late_failure_fails_only_that_point(tmp_path):
    nb = _notebook(tmp_path / "toy.ipynb")
    out = tmp_path / "sweep"
    res = run_sweep(nb, {"x": ["slow", "late", 5]}, out, timeout=5)
    assert [r.status for r in res] == ["failed", "failed", "done"]
    assert res[0].error == "timed out: a cell ran longer than 5 s (--timeout)"
    assert "RuntimeError: failed after writing results" in res[1].error
    assert not (out / "x=late" / "result.json").exists()  # its partial result does not pass for a finished one
    assert json.loads((out / "x=late" / "point.json").read_text())["status"] == "failed"
    again = run_sweep(nb, {"x": ["late", 5]}, out, timeout=60)
    assert [r.status for r in again] == ["failed", "skipped"]  # run again, not skipped as done
    csv_path, _ = summarize(out)
    assert [r["x"] for r in csv.DictReader(csv_path.open())] == ["5"]


def _point(out, name, result, status="done", params=None):
    folder = out / name
    folder.mkdir(parents=True)
    if result is not None:
        (folder / "result.json").write_text(result if isinstance(result, str) else json.dumps(result))
    if status is not None:
        record = {"params": params or dict(kv.split("=") for kv in name.split(",")), "status": status, "error": ""}
        (folder / "point.json").write_text(json.dumps(record))


def test_summarize_skips_failed_and_unreadable_points_and_plots_a_loss(tmp_path, capsys):
    _point(tmp_path, "lr=0.1", {"epoch": 3, "step": 12, "lr": 0.1, "train_loss": 0.5, "val_loss": 0.4})
    _point(tmp_path, "lr=0.2", {"epoch": 3, "step": 12, "lr": 0.2, "train_loss": 0.6, "val_loss": 0.3})
    _point(tmp_path, "lr=0.3", {"epoch": 1, "val_loss": 9.0}, status="failed")
    _point(tmp_path, "lr=0.4", "[{'kind': 'epoch'", status=None)  # a damaged file
    _point(tmp_path, "lr=0.5", [{"kind": "epoch", "epoch": 1}], status=None)  # a list: not a result
    _point(tmp_path, "stray", {"val_loss": 1.0}, status=None)  # no parameters to show
    _point(tmp_path, "a", {"val_loss": 2.0, "epoch": 1}, params={"posenc": "rope,alibi"})
    csv_path, png = summarize(tmp_path)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r.get("lr") or r.get("posenc") for r in rows] == ["rope,alibi", "0.1", "0.2"]
    assert png is not None
    assert "skip lr=0.4" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--metric 'accuracy' is not a numeric result"):
        summarize(tmp_path, "accuracy")


def test_default_metric_is_a_loss_never_bookkeeping():
    assert default_metric(["epoch", "step", "lr", "train_loss", "val_loss", "val_loss_inner"]) == "val_loss"
    assert default_metric(["epoch", "step", "train_loss", "val_ema_loss"]) == "val_ema_loss"
    assert default_metric(["epoch", "rmse_model", "rmse_neighbour_average"]) == "rmse_model"
    assert default_metric(["epoch", "step", "accumulation_gap"]) == "accumulation_gap"
    assert default_metric(["epoch", "step"]) is None


def test_summarize_without_points(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished sweep points"):
        summarize(tmp_path)


def test_summarize_reads_a_null_result_as_nan_and_keeps_the_metric(tmp_path):
    """write_result writes a non-finite number as null: the point stays, with NaN for it."""
    _point(tmp_path, "lr=0.1", {"val_loss": 0.4})
    _point(tmp_path, "lr=0.2", {"val_loss": None})
    csv_path, png = summarize(tmp_path)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["lr"] for r in rows] == ["0.1", "0.2"]
    assert float(rows[0]["val_loss"]) == 0.4 and math.isnan(float(rows[1]["val_loss"]))
    assert png is not None  # val_loss is still a metric of every point
