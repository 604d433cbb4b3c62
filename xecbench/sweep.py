"""Parameter sweeps over a notebook with papermill, and their summary.

``run_sweep(notebook, {"lr": [1e-3, 3e-3], "posenc": ["rope", "alibi"]}, out_dir)`` runs the grid:
each point gets a folder ``out_dir/<name=value,...>/`` with the executed notebook, the
``result.json`` the notebook writes into its ``out_dir`` parameter (:data:`RESULT_FILE`; a name the
trainer's own ``metrics.json`` never takes) and ``point.json``, the sweep's record of the point
(parameters, status, error). A point is skipped when its ``point.json`` says done and its
``result.json`` exists. A point that fails (a cell error, a cell timeout, a dead kernel, no result) is
recorded as failed, its result file removed, and the sweep carries on.
``summarize(out_dir)`` collects every finished point's parameters and numeric results into
``summary.csv`` and a figure of one metric (default: the headline loss, see :func:`default_metric`).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.io import atomic_path

RESULT_FILE = "result.json"  # written by the notebook into out_dir
POINT_FILE = "point.json"  # written by the sweep: params, status, error
BOOKKEEPING = ("epoch", "step", "lr", "seconds")  # never the default summary metric


@dataclass
class PointResult:
    params: dict[str, Any]
    folder: Path
    status: str  # "done" | "skipped" | "failed"
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


def parse_values(text: str) -> list[Any]:
    """``"1e-3,3e-3"`` -> [0.001, 0.003]; each value parsed as YAML (numbers, booleans, strings)."""
    out = []
    for item in text.split(","):
        v = yaml.safe_load(item)
        if isinstance(v, str):
            try:
                v = float(v)  # YAML 1.1 reads 1e-3 as a string
            except ValueError:
                pass
        out.append(v)
    return out


def point_name(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items()).replace("/", "_")


def grid(space: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]


def run_sweep(
    notebook: str | Path,
    space: dict[str, list[Any]],
    out_dir: str | Path,
    fixed: dict[str, Any] | None = None,
    timeout: int = 1800,
    progress: bool = False,
) -> list[PointResult]:
    """Execute ``notebook`` once per grid point (see module docstring). The kernel runs in the
    notebook's own folder, as in JupyterLab; ``out_dir`` is passed as an absolute path."""
    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} not found")
    out_dir = Path(out_dir).resolve()
    results = []
    for params in grid(space):
        folder = out_dir / point_name(params)
        result_file = folder / RESULT_FILE
        if _status(folder) == "done" and result_file.is_file():
            print(f"skip {folder.name} (done)")
            results.append(PointResult(params, folder, "skipped", metrics=_read_result(result_file)))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        result_file.unlink(missing_ok=True)  # left by an earlier, failed run of this point
        print(f"run  {folder.name}", flush=True)
        t0 = time.time()
        error = _execute(notebook, folder, {**(fixed or {}), **params, "out_dir": str(folder)}, timeout, progress)
        if not error and not result_file.is_file():
            error = f"the notebook ran but wrote no {RESULT_FILE} into out_dir"
        if not error:
            try:
                metrics = _read_result(result_file)
            except ValueError as exc:
                error = str(exc)
        record = {"params": params, "status": "failed" if error else "done", "error": error}
        with atomic_path(folder / POINT_FILE) as tmp:
            tmp.write_text(json.dumps({**record, "seconds": round(time.time() - t0, 1)}, indent=1, default=str))
        if error:
            result_file.unlink(missing_ok=True)  # a partial result must not pass for a finished point
            print(f"FAIL {folder.name}: {error}")
            results.append(PointResult(params, folder, "failed", error=error))
        else:
            results.append(PointResult(params, folder, "done", metrics=metrics))
    return results


def _execute(notebook: Path, folder: Path, parameters: dict[str, Any], timeout: int, progress: bool) -> str:
    """Run one point; returns "" or a one-line error (a failing point never stops the sweep)."""
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    try:
        pm.execute_notebook(
            str(notebook),
            str(folder / notebook.name),
            parameters=parameters,
            cwd=str(notebook.parent),
            execution_timeout=timeout,
            progress_bar=progress,
            kernel_name="python3",
        )
    except PapermillExecutionError as exc:
        return f"cell {exc.cell_index}: {exc.ename}: {' '.join(str(exc.evalue).split())}"
    except CellTimeoutError:
        return f"timed out: a cell ran longer than {timeout} s (--timeout)"
    except DeadKernelError as exc:
        return f"the kernel died: {' '.join(str(exc).split())}"
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return ""


def _status(folder: Path) -> str | None:
    try:
        return json.loads((folder / POINT_FILE).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _read_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of metrics, got a {type(data).__name__}")
    return data


def default_metric(keys: list[str]) -> str | None:
    """The metric to plot when none is named: ``val_loss``, else the first validation loss, else the
    first key with ``loss`` or ``rmse``, else the first that is not bookkeeping (epoch, step, lr)."""
    tests = (
        lambda k: k == "val_loss",
        lambda k: "loss" in k and "val" in k,
        lambda k: "loss" in k or "rmse" in k,
        lambda k: k not in BOOKKEEPING,
    )
    for test in tests:
        for k in keys:
            if test(k):
                return k
    return None


def summarize(out_dir: str | Path, metric: str | None = None) -> tuple[Path, Path | None]:
    """Write ``summary.csv`` (one row per finished point: its parameters, then its numeric results) and
    ``summary.png`` (``metric``, default :func:`default_metric`, per point). Points that failed or whose
    result file is unreadable are left out. Returns the two paths (the figure None without a metric)."""
    out_dir = Path(out_dir)
    rows, labels, metric_keys = [], [], []
    for result_file in sorted(out_dir.glob(f"*/{RESULT_FILE}")):
        folder = result_file.parent
        if _status(folder) == "failed":
            continue
        try:
            results = _read_result(result_file)
        except ValueError as exc:
            print(f"skip {folder.name}: {exc}")
            continue
        params = _params(folder)
        if params is None:
            print(f"skip {folder.name}: neither {POINT_FILE} nor a name=value folder name")
            continue
        # null: a number that was not finite (write_result writes NaN and inf so)
        numeric = {
            k: math.nan if v is None else v
            for k, v in results.items()
            if v is None or (isinstance(v, int | float) and not isinstance(v, bool))
        }
        metric_keys += [k for k in numeric if k not in metric_keys and k not in params]
        rows.append({**params, **numeric})
        labels.append(folder.name)
    if not rows:
        raise FileNotFoundError(f"no finished sweep points (*/{RESULT_FILE}) under {out_dir}")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    csv_path = out_dir / "summary.csv"
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buf.getvalue())

    complete = [k for k in metric_keys if all(k in r for r in rows)]
    if metric is not None and metric not in metric_keys:
        raise ValueError(f"--metric {metric!r} is not a numeric result of any point; they are {metric_keys}")
    metric = metric or default_metric(complete)
    if metric is None:
        return csv_path, None

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(label, r[metric]) for label, r in zip(labels, rows) if metric in r]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(shown)), 3.6), layout="constrained")
    ax.bar(range(len(shown)), [v for _, v in shown])
    ax.set_xticks(range(len(shown)), [label for label, _ in shown], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per sweep point")
    png = out_dir / "summary.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return csv_path, png


def _params(folder: Path) -> dict[str, Any] | None:
    """A point's parameters: from its ``point.json``, else parsed from its folder name."""
    try:
        params = json.loads((folder / POINT_FILE).read_text())["params"]
        if isinstance(params, dict):
            return params
    except (OSError, ValueError, KeyError, TypeError):
        pass
    items = folder.name.split(",")
    if not all("=" in kv for kv in items):
        return None
    return {k: v for k, v in (kv.split("=", 1) for kv in items)}
