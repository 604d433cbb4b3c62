"""The main job: simulate events, pretrain a tiny MAE for about a minute on CPU, draw a reconstruction.

``xecbench demo`` runs it from the command line; every step prints what it does. Training goes
through the same :class:`xecbench.train.Trainer` as the CLI, the notebooks and the sweeps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the demo writes files; it never opens a window


from .eval import reconstruct  # noqa: E402
from .nn import count_parameters  # noqa: E402
from .train import load_config, make_trainer  # noqa: E402
from .train.config import PACKAGED_CONFIGS  # noqa: E402
from .viz import event_display, face_panels  # noqa: E402

CONFIG = PACKAGED_CONFIGS / "mae_tiny.yaml"


def run_demo(
    out_dir: str | Path = "runs/demo", epochs: int = 4, n_train: int = 2048, seed: int = 0, progress: bool = True
) -> dict:
    """Run the demo; returns a summary dict (also written to ``out_dir/summary.json``)."""
    out = Path(out_dir)
    t0 = time.time()
    overrides = [
        f"training.epochs={epochs}",
        f"data.n_train={n_train}",
        "data.n_val=128",
        f"data.seed={seed}",
        f"training.seed={seed}",
        f"training.run_dir={out}",
        f"training.progress={str(progress).lower()}",
        "training.log_every=8",
    ]
    cfg = load_config(CONFIG, overrides)
    print(f"[1/4] simulating {n_train} training and 128 validation events (toy XEC, 52.8 MeV gammas) ...")
    trainer = make_trainer(cfg, callbacks=[_print_epoch])
    print(f"      done in {time.time() - t0:.1f} s")
    model = trainer.model
    print(
        f"[2/4] pretraining a tiny MAE ({count_parameters(model) / 1e6:.2f} M parameters) for {epochs} epochs"
        f" ({trainer.steps_per_epoch} steps each), mask ratio {cfg.model.mask_ratio} ..."
    )
    trainer.fit()
    print("[3/4] validating the EMA weights ...")
    final = [r for r in trainer.history if r["kind"] == "epoch"][-1]
    print(f"      validation loss: live {final['val_loss']:.4f}, EMA {final['val_ema_loss']:.4f} (normalised units)")

    print(f"[4/4] drawing a reconstructed event into {out}/ ...")
    val = trainer.val_data
    rec = reconstruct(model, val, 0, cfg.model.mask_ratio, seed)
    fig = face_panels(
        {
            "masked input": rec["masked_input"],
            "neighbour average": rec["neighbour_average"],
            "MAE reconstruction": rec["reconstruction"],
            "truth": rec["truth"],
        },
        "inner",
        dead=rec["dead"],
        title=f"Inner face, {cfg.model.mask_ratio:.0%} of valid sensors hidden (grey; crosses: dead channels): "
        f"MAE after {trainer.step} steps",
    )
    fig.savefig(out / "reconstruction_inner.png", dpi=110)
    fig = event_display(
        rec["reconstruction"],
        dead=rec["dead"],
        hidden=rec["hidden"],
        title="Reconstructed event (white dots: sensors the model filled in)",
    )
    fig.savefig(out / "reconstruction_event.png", dpi=110)
    summary = {
        "steps": trainer.step,
        "train_loss": [r["train_loss"] for r in trainer.history if r["kind"] == "epoch"],
        "val_loss": final["val_loss"],
        "val_ema_loss": final["val_ema_loss"],
        "seconds": time.time() - t0,
        "figures": ["reconstruction_inner.png", "reconstruction_event.png"],
        "checkpoint": "checkpoint.pt",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"done in {summary['seconds']:.0f} s: {out / 'reconstruction_inner.png'}")
    return summary


def _print_epoch(kind: str, trainer, row: dict) -> None:
    if kind == "epoch":
        print(
            f"      epoch {row['epoch']}: train {row['train_loss']:.4f}, validation {row['val_loss']:.4f},"
            f" lr {row['lr']:.2e}"
        )
