"""Command line: ``xecbench demo | simulate | display | info``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, epochs=args.epochs, n_train=args.events, seed=args.seed)


def _simulate(args: argparse.Namespace) -> None:
    from .data import SimConfig, save_npz, simulate, write_root

    cfg = SimConfig(spectrum=args.spectrum, random_dead_fraction=args.random_dead)
    out = Path(args.out)
    if out.suffix not in (".root", ".npz"):
        sys.exit(f"xecbench simulate: --out must end in .root or .npz, got {out}")
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
    from .data import load_events, raw_invalid
    from .viz import event_display

    events = load_events(args.file)
    key = "npho" if args.quantity == "npho" else "relative_time"
    values = events[key][args.event]
    fig = event_display(
        values,
        quantity=args.quantity,
        dead=raw_invalid(events["npho"][args.event]).numpy(),
        title=f"{args.file} event {args.event}: {args.quantity}",
    )
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def _train(args: argparse.Namespace) -> None:
    from .train import load_config, run_training

    cfg = load_config(args.config, args.set)
    trainer = run_training(cfg, resume=args.resume)
    if trainer.dist.is_main:
        last = [r for r in trainer.history if r["kind"] == "epoch"][-1]
        shown = {k: round(v, 5) for k, v in last.items() if k in ("train_loss", "val_loss", "val_ema_loss")}
        print(f"finished {trainer.epoch} epochs ({trainer.step} optimiser steps): {shown}")
        print(f"checkpoint and metrics in {cfg.training.run_dir}")


def _evaluate(args: argparse.Namespace) -> None:
    import json

    from .data import EventDataset
    from .eval import compare_inpainting, format_table
    from .train import build_model, config_from_checkpoint, inference_weights, load_checkpoint

    state = load_checkpoint(args.checkpoint)
    cfg = config_from_checkpoint(state)
    if cfg.model.task != "inpaint":
        sys.exit(f"xecbench evaluate: {args.checkpoint} holds a {cfg.model.task!r} model; it needs an inpainter")
    model = build_model(_without_init(cfg.model))
    model.load_state_dict(inference_weights(state))
    data = EventDataset.from_file(args.data) if args.data else EventDataset.from_simulation(args.events, seed=args.seed)
    ratio = args.mask_ratio if args.mask_ratio is not None else cfg.model.inpaint_mask_ratio
    result = compare_inpainting(model, data, mask_ratio=ratio, seed=args.seed)
    for units in ("raw", "normalised"):
        for stat in ("mae", "rmse", "bias", "width68"):
            print(f"\n[{units} npho] {stat}")
            print(format_table(result[units], stat))
    if args.out:
        from .data.io import atomic_path

        tables = {k: v for k, v in result.items() if k in ("raw", "normalised")}
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(tables, indent=1))
        print(f"\nwrote {args.out}")


def _without_init(model_cfg):
    """The model config without ``init_from``: the checkpoint already holds the weights."""
    from dataclasses import replace

    return replace(model_cfg, init_from=None)


def _sweep(args: argparse.Namespace) -> None:
    from .sweep import parse_values, run_sweep, summarize

    if args.summarize:
        csv_path, png = summarize(args.summarize, args.metric)
        print(f"wrote {csv_path}" + (f" and {png}" if png else ""))
        return
    if not args.notebook or not args.out:
        sys.exit("xecbench sweep: give NOTEBOOK -p name v1,v2 ... --out DIR, or --summarize DIR")
    space = {}
    for name, values in args.p:
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
        sys.exit(1)


def _info(args: argparse.Namespace) -> None:
    from . import __version__
    from .geometry import summary
    from .nn import preset_parameter_counts

    print(f"xecbench {__version__}: 4760 sensors on six faces")
    print(summary())
    print("model presets (trainable parameters):")
    for name, counts in preset_parameter_counts().items():
        print(f"  {name:>5}: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xecbench", description="Workbench for ML on the MEG II LXe calorimeter")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="simulate, pretrain a tiny MAE on CPU, draw a reconstruction")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--epochs", type=int, default=4, help="training epochs (default 4, about a minute)")
    d.add_argument("--events", type=int, default=2048, help="training events to simulate")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)

    s = sub.add_parser("simulate", help="write a simulated data set (.root or .npz)")
    s.add_argument("n", type=int, help="number of events")
    s.add_argument("--out", required=True, help="output file, .root or .npz")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--spectrum", choices=("mono", "flat"), default="mono")
    s.add_argument("--random-dead", type=float, default=0.0, help="extra dead fraction per event")
    s.set_defaults(func=_simulate)

    v = sub.add_parser("display", help="draw one event of a .root/.npz file")
    v.add_argument("file")
    v.add_argument("--event", type=int, default=0)
    v.add_argument("--quantity", choices=("npho", "time"), default="npho")
    v.add_argument("--out", default="event.png")
    v.set_defaults(func=_display)

    t = sub.add_parser("train", help="train from a YAML config (MAE or inpainting)")
    t.add_argument("config", help="YAML file with sections model, data, training (see configs/)")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. --set training.lr=1e-3 (repeatable)",
    )
    t.add_argument("--resume", default=None, help="a checkpoint to continue from")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="an inpainting checkpoint against the baselines, per face")
    e.add_argument("checkpoint")
    e.add_argument("--data", default=None, help=".root/.npz events (default: simulate --events)")
    e.add_argument("--events", type=int, default=256)
    e.add_argument("--seed", type=int, default=2024)
    e.add_argument("--mask-ratio", type=float, default=None, help="default: the model's inpaint_mask_ratio")
    e.add_argument("--out", default=None, help="write the full result as JSON")
    e.set_defaults(func=_evaluate)

    w = sub.add_parser("sweep", help="run a notebook over a parameter grid with papermill, or summarize one")
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
    w.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    w.add_argument("--summarize", metavar="DIR", help="write DIR/summary.csv and summary.png")
    w.add_argument("--metric", default=None, help="metric to plot with --summarize")
    w.set_defaults(func=_sweep)

    i = sub.add_parser("info", help="print the detector layout")
    i.set_defaults(func=_info)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
