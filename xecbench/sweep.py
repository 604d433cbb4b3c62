"""Parameter sweeps over a notebook with papermill, and their summary.

``run_sweep(notebook, {"lr": [1e-3, 3e-3], "posenc": ["rope", "alibi"]}, out_dir)`` runs the grid:
each point gets a folder ``out_dir/<name=value,...>/`` with the executed notebook and the
``metrics.json`` the notebook writes into its ``out_dir`` parameter. Points whose ``metrics.json``
exists are skipped, a failing point is reported with its cell error and the sweep carries on.
``summarize(out_dir)`` collects every point's parameters and metrics into ``summary.csv`` and a
comparison figure.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.io import atomic_path


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
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} not found")
    out_dir = Path(out_dir).resolve()
    results = []
    for params in grid(space):
        folder = out_dir / point_name(params)
        metrics_file = folder / "metrics.json"
        if metrics_file.is_file():
            print(f"skip {folder.name} (done)")
            results.append(PointResult(params, folder, "skipped", metrics=json.loads(metrics_file.read_text())))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        print(f"run  {folder.name}", flush=True)
        try:
            pm.execute_notebook(
                str(notebook),
                str(folder / notebook.name),
                parameters={**(fixed or {}), **params, "out_dir": str(folder)},
                cwd=str(notebook.parent),
                execution_timeout=timeout,
                progress_bar=progress,
                kernel_name="python3",
            )
        except PapermillExecutionError as exc:
            msg = f"cell {exc.cell_index}: {exc.ename}: {exc.evalue}"
            print(f"FAIL {folder.name}: {msg}")
            results.append(PointResult(params, folder, "failed", error=msg))
            continue
        if not metrics_file.is_file():
            msg = f"the notebook ran but wrote no {metrics_file.name} into out_dir"
            print(f"FAIL {folder.name}: {msg}")
            results.append(PointResult(params, folder, "failed", error=msg))
            continue
        results.append(PointResult(params, folder, "done", metrics=json.loads(metrics_file.read_text())))
    return results


def summarize(out_dir: str | Path, metric: str | None = None) -> tuple[Path, Path | None]:
    """Write ``summary.csv`` (one row per finished point: its parameters, then its numeric metrics) and
    ``summary.png`` (``metric``, default the first numeric metric, per point). Returns their paths."""
    out_dir = Path(out_dir)
    rows = []
    for metrics_file in sorted(out_dir.glob("*/metrics.json")):
        params = dict(kv.split("=", 1) for kv in metrics_file.parent.name.split(","))
        metrics = {k: v for k, v in json.loads(metrics_file.read_text()).items() if isinstance(v, int | float)}
        rows.append({**params, **metrics})
    if not rows:
        raise FileNotFoundError(f"no finished sweep points (*/metrics.json) under {out_dir}")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    csv_path = out_dir / "summary.csv"
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buf.getvalue())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = [k for k in keys if all(isinstance(r.get(k), int | float) for r in rows)]
    metric = metric or (numeric[0] if numeric else None)
    if metric is None:
        return csv_path, None
    labels = [metric_file.parent.name for metric_file in sorted(out_dir.glob("*/metrics.json"))]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows)), 3.6), layout="constrained")
    ax.bar(range(len(rows)), [r[metric] for r in rows])
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per sweep point")
    png = out_dir / "summary.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return csv_path, png
