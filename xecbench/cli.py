"""Command line: ``xecbench demo | simulate | display | train | evaluate | inpaint | export | sweep | info``.

Every error is one line on stderr, ``xecbench COMMAND: what is wrong``, with exit status 2 for what the
user must fix (arguments, config, missing or unreadable files, data files in the wrong format) and 1
for failures while running (e.g. a NaN loss); Ctrl-C exits with 130 (``train`` says how to resume).
``xecbench --debug ...`` or ``XECBENCH_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
import typing
from pathlib import Path

from .memory import keep_freed_memory


class UsageError(Exception):
    """A command-line argument the command cannot use (exit status 2)."""


class RunFailed(Exception):
    """The command ran but did not succeed (exit status 1)."""


class Interrupted(Exception):
    """Ctrl-C, with a line saying how to go on (exit status 130)."""


EVALUATE_SIMULATED = 256  # events that `evaluate` simulates when given no --data and no --events


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise UsageError(f"{name} must be >= 1, got {value}")


def _fraction(name: str, value: float, lo_open: bool = True) -> None:
    if not ((0.0 < value if lo_open else 0.0 <= value) and value < 1.0):
        raise UsageError(f"{name} must be in {'(' if lo_open else '['}0, 1), got {value}")


def _demo(args: argparse.Namespace) -> None:
    _positive("--epochs", args.epochs)
    _positive("--events", args.events)
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    from .demo import run_demo

    run_demo(args.out, epochs=args.epochs, n_train=args.events, seed=args.seed)


def _simulate(args: argparse.Namespace) -> None:
    from .data import SimConfig, save_npz, simulate, write_root

    _positive("n (the number of events)", args.n)
    _fraction("--random-dead", args.random_dead, lo_open=False)
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    if out.suffix not in (".root", ".npz"):
        raise UsageError(f"--out must end in .root or .npz, got {out}")
    cfg = SimConfig(spectrum=args.spectrum, random_dead_fraction=args.random_dead)
    print(f"simulating {args.n} events (seed {args.seed}, spectrum {args.spectrum}) -> {out}")
    chunk = 4096

    def chunks():
        for start in range(0, args.n, chunk):
            yield simulate(min(chunk, args.n - start), seed=args.seed, config=cfg, start=start)

    if out.suffix == ".root":
        write_root(out, chunks())
    else:
        save_npz(out, simulate(args.n, seed=args.seed, config=cfg))
    print(f"wrote {out}")


def _display(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from .data import count_events, load_events, raw_invalid
    from .viz import event_display

    formats = FigureCanvasAgg.get_supported_filetypes()
    if Path(args.out).suffix.lstrip(".").lower() not in formats:
        raise UsageError(f"--out must end in one of {sorted('.' + f for f in formats)}, got {args.out}")
    n = count_events(args.file)
    if not 0 <= args.event < n:
        raise UsageError(f"--event must be in 0..{n - 1}: {args.file} holds {n} events, got {args.event}")
    event = load_events(args.file, entry_start=args.event, entry_stop=args.event + 1)  # that event only
    key = "npho" if args.quantity == "npho" else "relative_time"
    fig = event_display(
        event[key][0],
        quantity=args.quantity,
        dead=raw_invalid(event["npho"][0]).numpy(),
        title=f"{args.file} event {args.event}: {args.quantity}",
    )
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def _train(args: argparse.Namespace) -> None:
    from .train import load_config, run_training

    cfg = load_config(args.config, args.set)
    started = time.time()
    try:
        trainer = run_training(cfg, resume=args.resume)
    except KeyboardInterrupt:
        raise Interrupted(_resume_hint(args, Path(cfg.training.run_dir) / "checkpoint.pt", started)) from None
    if trainer.dist.is_main:
        last = [r for r in trainer.history if r["kind"] == "epoch"][-1]
        shown = {k: round(v, 5) for k, v in last.items() if k in ("train_loss", "val_loss", "val_ema_loss")}
        print(f"finished {trainer.epoch} epochs ({trainer.step} optimiser steps): {shown}")
        print(f"checkpoint and metrics in {cfg.training.run_dir}")


def _resume_hint(args: argparse.Namespace, checkpoint: Path, started: float) -> str:
    """The line printed on Ctrl-C: the command that continues from the newest checkpoint of this run."""
    command = ["xecbench", "train", args.config] + [w for s in args.set for w in ("--set", s)]
    if checkpoint.is_file() and (checkpoint.stat().st_mtime >= started - 1 or args.resume):
        last = checkpoint
    elif args.resume:
        last = Path(args.resume)
    else:
        return f"interrupted before the first checkpoint; start again with: {shlex.join(command)}"
    return f"interrupted; resume with: {shlex.join([*command, '--resume', str(last)])}"


def _evaluate(args: argparse.Namespace) -> None:
    import json

    if args.events is not None:
        _positive("--events", args.events)
    if args.mask_ratio is not None:
        _fraction("--mask-ratio", args.mask_ratio)
    from .data import EventDataset, load_events, simulate
    from .eval import compare_inpainting, format_table
    from .train import build_normalizer, build_sim_config, load_trained
    from .train.tasks import fiducial

    model, cfg, which = load_trained(args.checkpoint, args.weights)
    if cfg.model.task == "regress" and args.mask_ratio is not None:
        raise UsageError(f"--mask-ratio: {args.checkpoint} holds a regressor, which hides nothing; remove it")
    norm = build_normalizer(cfg.data)
    print(f"using {which}")
    if args.data:  # the first --events of the file (default all), and no other is read
        events = load_events(args.data, entry_stop=args.events)
    else:
        events = simulate(args.events or EVALUATE_SIMULATED, seed=args.seed, config=build_sim_config(cfg.data))
    if cfg.model.task == "regress" and cfg.data.fiducial:  # evaluate where the model was trained
        events = fiducial(events, args.data or "the simulated events")
    data = EventDataset(events, norm)
    if cfg.model.task == "regress":
        _evaluate_regression(args, cfg, model, data)
        return
    default = cfg.model.inpaint_mask_ratio if cfg.model.task == "inpaint" else cfg.model.mask_ratio
    ratio = args.mask_ratio if args.mask_ratio is not None else default
    result = compare_inpainting(model, data, mask_ratio=ratio, seed=args.seed)
    for units in ("raw", "normalised"):
        for stat in ("mae", "rmse", "bias", "width68"):
            print(f"\n[{units} npho] {stat}")
            print(format_table(result[units], stat))
    if result["gap_closed"]:
        gaps = "  ".join(
            f"{face} {v:.0%}" if math.isfinite(v) else f"{face} -" for face, v in result["gap_closed"].items()
        )
        print(f"\nneighbour-average-to-floor gap closed by the model (normalised MSE): {gaps}")
    else:
        print("\nno Poisson floor: the data carry no nphoExpected (simulated data do)")
    if args.out:
        from .data.io import atomic_path

        tables = {k: v for k, v in result.items() if k in ("raw", "normalised", "gap_closed")}
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(_finite_or_none(tables), indent=1))  # NaN is not JSON: null
        print(f"\nwrote {args.out}")


def _evaluate_regression(args: argparse.Namespace, cfg, model, data) -> None:
    """A regressor against the classical reconstruction, calibrated on (up to 2000 of) its training events."""
    import json
    from dataclasses import replace

    from .eval import compare_regression, format_regression_table
    from .train import build_datasets

    calib_cfg = replace(cfg, data=replace(cfg.data, n_train=min(cfg.data.n_train, 2000)))
    calibration, _ = build_datasets(calib_cfg)
    result = compare_regression(model, data, calibration)
    print(f"\n{len(data)} events; classical estimates calibrated on {len(calibration)} training events")
    for stat in ("width68", "bias"):
        print(f"\n{stat}")
        print(format_regression_table(result["metrics"], stat))
    for method, rows in result["energy_bins"].items():
        cells = "  ".join(f"{r['lo']:.0f}-{r['hi']:.0f}: {r['width68']:.3g}" for r in rows)
        print(f"\nenergy resolution (68 % width) in bins of true energy [MeV], {method}: {cells}")
    if args.out:
        from .data.io import atomic_path

        tables = {"metrics": result["metrics"], "energy_bins": result["energy_bins"]}
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(_finite_or_none(tables), indent=1))
        print(f"\nwrote {args.out}")


def _inpaint(args: argparse.Namespace) -> None:
    from .inpaint_files import inpaint_root

    _positive("--step-size", args.step_size)
    _positive("--batch-size", args.batch_size)
    dead = None
    if args.dead_channels:
        if args.fill == "invalid":
            raise UsageError("--dead-channels is used with --fill dead or --fill both, not --fill invalid")
        from .data import dead_channel_map

        dead = dead_channel_map(args.dead_channels)
    started = time.perf_counter()
    written = inpaint_root(
        args.inputs,
        args.out,
        args.checkpoint,
        fill=args.fill,
        dead_channels=dead,
        tree=args.tree,
        npho_branch=args.npho_branch,
        time_branch=args.time_branch,
        step_size=args.step_size,
        batch_size=args.batch_size,
        weights=args.weights,
        device=args.device,
        progress=not args.quiet,
    )
    print(f"wrote {', '.join(map(str, written))} in {time.perf_counter() - started:.1f} s")


def _export(args: argparse.Namespace) -> None:
    from .export import export_model

    fmt = args.format or ("onnx" if str(args.out).endswith(".onnx") else "torchscript")
    path, info = export_model(args.checkpoint, args.out, fmt, args.weights)
    ins = ", ".join(f"{k} {tuple(v)}" for k, v in info["inputs"].items())
    outs = ", ".join(f"{k} {v}" for k, v in info["outputs"].items())
    print(f"wrote {path} ({fmt}, {info['task']}): inputs {ins}; outputs {outs}")


def _finite_or_none(tree):
    """Nested dicts of numbers with NaN/inf replaced by None (a face with nothing scored)."""
    if isinstance(tree, dict):
        return {k: _finite_or_none(v) for k, v in tree.items()}
    return None if isinstance(tree, float) and not math.isfinite(tree) else tree


def _sweep(args: argparse.Namespace) -> None:
    from .sweep import parse_values, run_sweep, summarize

    if args.summarize:
        try:
            csv_path, png = summarize(args.summarize, args.metric)
        except ValueError as exc:  # an unknown --metric
            raise UsageError(str(exc)) from None
        print(f"wrote {csv_path}" + (f" and {png}" if png else ""))
        return
    if not args.notebook or not args.out:
        raise UsageError("give NOTEBOOK -p NAME V1,V2 ... --out DIR, or --summarize DIR")
    _positive("--timeout", args.timeout)
    space = {}
    for name, values in args.p:
        if name in space:
            raise UsageError(f"-p {name} is given twice; give its values once, comma-separated")
        space[name] = parse_values(values)
    results = run_sweep(args.notebook, space, args.out, timeout=args.timeout)
    failed = [r for r in results if r.status == "failed"]
    print(
        f"{len(results)} points: {sum(r.status == 'done' for r in results)} run, "
        f"{sum(r.status == 'skipped' for r in results)} skipped, {len(failed)} failed"
    )
    for r in failed:
        print(f"  failed {r.folder.name}: {r.error}")
    if failed:
        raise RunFailed(f"{len(failed)} of {len(results)} points failed (listed above)")


def _info(args: argparse.Namespace) -> None:
    from . import __version__
    from .geometry import summary
    from .nn import preset_parameter_counts

    print(f"xecbench {__version__}: 4760 sensors on six faces")
    from .train.config import PACKAGED_CONFIGS, packaged_configs

    print(summary())
    print(f"packaged configs (xecbench train NAME; files in {PACKAGED_CONFIGS}): {', '.join(packaged_configs())}")
    print("model presets (trainable parameters):")
    for name, counts in preset_parameter_counts().items():
        print(f"  {name:>5}: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items()))


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _command(sub, name: str, summary: str, func, parents) -> argparse.ArgumentParser:
    """A subcommand whose one-line ``summary`` shows in ``xecbench --help`` and heads its own help."""
    c = sub.add_parser(name, parents=parents, help=summary, description=summary)
    c.set_defaults(func=func)
    return c


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p = _Parser(prog="xecbench", description="Workbench for ML on the MEG II LXe calorimeter")
    p.add_argument("--debug", action="store_true", help="show tracebacks (or set XECBENCH_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    seed = "random seed (default %(default)s)"

    d = _command(sub, "demo", "simulate, pretrain a tiny MAE on the CPU, draw a reconstruction", _demo, [debug])
    d.add_argument("--out", default="runs/demo", help="output folder (default %(default)s)")
    d.add_argument("--epochs", type=int, default=4, help="training epochs (default %(default)s, about a minute)")
    d.add_argument("--events", type=int, default=2048, help="training events to simulate (default %(default)s)")
    d.add_argument("--seed", type=int, default=0, help=seed)

    s = _command(sub, "simulate", "write simulated events to a .root or .npz file", _simulate, [debug])
    s.add_argument("n", type=int, help="number of events")
    s.add_argument("--out", required=True, help="output file, .root or .npz (e.g. runs/sim.root)")
    s.add_argument("--seed", type=int, default=0, help=seed)
    s.add_argument(
        "--spectrum", choices=("mono", "flat"), default="mono", help="52.8 MeV, or flat in 10-60 MeV (default mono)"
    )
    s.add_argument("--random-dead", type=float, default=0.0, help="extra dead fraction drawn per event (default 0)")

    v = _command(sub, "display", "draw one event of a .root/.npz file as an image", _display, [debug])
    v.add_argument("file", help="a .root or .npz file of events")
    v.add_argument("--event", type=int, default=0, help="which event, from 0 (default 0)")
    v.add_argument("--quantity", choices=("npho", "time"), default="npho", help="what to colour (default npho)")
    v.add_argument("--out", default="runs/event.png", help="image file (default %(default)s)")

    t = _command(sub, "train", "train an MAE, inpainter or regressor from a YAML config", _train, [debug])
    t.add_argument(
        "config", help="a YAML file with sections model, data, training, or a packaged config's name (e.g. mae_tiny)"
    )
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. --set training.lr=1e-3 (repeatable)",
    )
    t.add_argument("--resume", default=None, help="a checkpoint of this run to continue from")

    e = _command(
        sub,
        "evaluate",
        "score a checkpoint against the classical baselines (per face, or per regression target)",
        _evaluate,
        [debug],
    )
    e.add_argument("checkpoint", help="a checkpoint.pt written by xecbench train")
    e.add_argument("--data", default=None, help=".root/.npz events (default: simulate --events)")
    e.add_argument(
        "--events",
        type=int,
        default=None,
        help=f"the first N events of --data (default all), or N simulated events (default {EVALUATE_SIMULATED})",
    )
    e.add_argument("--seed", type=int, default=2024, help="seed of the events and masks (default %(default)s)")
    e.add_argument(
        "--mask-ratio", type=float, default=None, help="default: the model's (inpaint_)mask_ratio; not for a regressor"
    )
    e.add_argument(
        "--weights", choices=("ema", "live"), default=None, help="default: ema when the checkpoint has one, else live"
    )
    e.add_argument("--out", default=None, help="write the full result as JSON (e.g. runs/eval.json)")

    n = _command(sub, "inpaint", "fill the dead channels of ROOT files with a trained inpainter", _inpaint, [debug])
    n.add_argument("inputs", nargs="+", metavar="IN.root", help="input ROOT files")
    n.add_argument("--checkpoint", required=True, help="an inpaint (or mae) checkpoint")
    n.add_argument(
        "--out", required=True, help="a .root file (all inputs, concatenated) or a folder (one file per input)"
    )
    n.add_argument(
        "--fill",
        choices=("invalid", "dead", "both"),
        default="invalid",
        help="sensors to fill: flagged invalid in the file, on the dead-channel map, or both (default invalid)",
    )
    n.add_argument("--dead-channels", default=None, help="dead-channel map, one id per line (default: packaged)")
    n.add_argument("--tree", default="tree", help="the TTree's name (default tree)")
    n.add_argument("--npho-branch", default="npho", help="the branch of photon counts (default npho)")
    n.add_argument("--time-branch", default="relative_time", help="the branch of times (default relative_time)")
    n.add_argument("--step-size", type=int, default=2000, help="events read and written per chunk (default 2000)")
    n.add_argument("--batch-size", type=int, default=64, help="events per model call (default 64)")
    n.add_argument("--weights", choices=("ema", "live"), default=None, help="default: ema when the checkpoint has one")
    n.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    n.add_argument("--quiet", action="store_true", help="no progress bar")

    x = _command(sub, "export", "export a trained inpainter or regressor to TorchScript or ONNX", _export, [debug])
    x.add_argument("checkpoint", help="an inpaint, mae or regress checkpoint")
    x.add_argument("--out", required=True, help="output file, e.g. runs/inpainter.pt or runs/inpainter.onnx")
    x.add_argument(
        "--format",
        choices=("torchscript", "onnx"),
        default=None,
        help="default: onnx for a .onnx --out, else torchscript",
    )
    x.add_argument("--weights", choices=("ema", "live"), default=None, help="default: ema when the checkpoint has one")

    w = _command(
        sub, "sweep", "run a notebook over a parameter grid (papermill), or summarize a sweep", _sweep, [debug]
    )
    w.add_argument("notebook", nargs="?", help="the notebook (its first cell tagged 'parameters')")
    w.add_argument(
        "-p",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUES"),
        help="a parameter and comma-separated values, e.g. -p lr 1e-3,3e-3 (repeatable)",
    )
    w.add_argument("--out", help="sweep folder: one subfolder per point")
    w.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default %(default)s)")
    w.add_argument("--summarize", metavar="DIR", help="write DIR/summary.csv and summary.png from its result.json")
    w.add_argument("--metric", default=None, help="metric to plot with --summarize (default: the headline loss)")

    _command(sub, "info", "print the detector layout, the packaged configs and the model sizes", _info, [debug])
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    prog = f"xecbench {args.command}"
    keep_freed_memory()
    if args.debug or os.environ.get("XECBENCH_DEBUG", "") not in ("", "0"):
        args.func(args)
        return
    try:
        args.func(args)
    except Interrupted as exc:
        _fail(prog, str(exc), 130)
    except KeyboardInterrupt:
        _fail(prog, "interrupted", 130)
    except Exception as exc:
        status = _exit_status(exc)
        text = " ".join(str(exc).split()) or type(exc).__name__
        if status == 1 and not isinstance(exc, RunFailed):
            text = f"{type(exc).__name__}: {text} (xecbench --debug {args.command} ... shows the traceback)"
        _fail(prog, text, status)


def _exit_status(exc: BaseException) -> int:
    """2 for what the user must fix (arguments, config, files), 1 for failures while running."""
    user: list[type] = [UsageError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError]
    for module, name in (
        ("xecbench.train.config", "ConfigError"),
        ("xecbench.data.io", "DataFormatError"),
        ("xecbench.inpaint_files", "InpaintArgumentError"),
    ):
        if module in sys.modules:  # not imported: the exception cannot be one of them
            user.append(getattr(sys.modules[module], name))
    return 2 if isinstance(exc, tuple(user)) else 1


def _fail(prog: str, text: str, status: int) -> typing.NoReturn:
    sys.stdout.flush()
    print(f"{prog}: {text}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
