"""Command line: ``xecbench demo | simulate | display | info``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, seconds=args.seconds, max_steps=args.steps, n_train=args.events, seed=args.seed)


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


def _info(args: argparse.Namespace) -> None:
    from . import __version__
    from .geometry import summary

    print(f"xecbench {__version__}: 4760 sensors on six faces")
    print(summary())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xecbench", description="Workbench for ML on the MEG II LXe calorimeter")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="simulate, pretrain a tiny MAE on CPU, draw a reconstruction")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--seconds", type=float, default=60.0, help="training time budget (default 60)")
    d.add_argument("--steps", type=int, default=None, help="train for exactly this many steps instead")
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

    i = sub.add_parser("info", help="print the detector layout")
    i.set_defaults(func=_info)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
