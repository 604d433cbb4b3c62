"""The main job: simulate events, pretrain a tiny MAE for about a minute on CPU, draw a reconstruction.

``xecbench demo`` runs it from the command line; every step prints what it does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the demo writes files; it never opens a window

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from .data import EventDataset, make_loader  # noqa: E402
from .nn import XECMAE, MAEConfig, count_parameters, encoder_config  # noqa: E402
from .viz import event_display, face_panels  # noqa: E402


def reconstruct(model: XECMAE, dataset: EventDataset, index: int, mask_ratio: float, seed: int = 0):
    """Mask one event at ``mask_ratio`` and reconstruct it. Returns raw ``(4760,)`` arrays:
    truth, masked input (NaN where hidden), reconstruction (prediction at hidden sensors, input
    elsewhere), and the mask and dead masks."""
    item = dataset[index : index + 1]
    g = torch.Generator().manual_seed(seed)
    model.eval()
    with torch.no_grad():
        out = model(item["x"], item["valid"], item["time_valid"], mask_ratio=mask_ratio, generator=g)
    norm = dataset.normalizer
    truth = norm.npho_inverse(item["x"][0, :, 0].double()).numpy()
    pred = norm.npho_inverse(out.pred[0, :, 0].double()).clamp(min=0).numpy()
    mask = out.mask[0].numpy()
    dead = ~item["valid"][0].numpy()
    truth[dead] = np.nan
    masked_input = np.where(mask, np.nan, truth)
    recon = np.where(mask, pred, truth)
    return {"truth": truth, "masked_input": masked_input, "reconstruction": recon, "mask": mask, "dead": dead}


def run_demo(
    out_dir: str | Path = "runs/demo",
    seconds: float = 60.0,
    max_steps: int | None = None,
    n_train: int = 2048,
    batch_size: int = 32,
    lr: float = 2e-3,
    mask_ratio: float = 0.6,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Run the demo; returns a summary dict (also written to ``out_dir/summary.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    t0 = time.time()
    print(f"[1/4] simulating {n_train} training and 64 validation events (toy XEC, 52.8 MeV gammas) ...")
    train = EventDataset.from_simulation(n_train, seed=seed)
    val = EventDataset.from_simulation(64, seed=seed + 1)
    print(f"      done in {time.time() - t0:.1f} s")

    model = XECMAE(MAEConfig(encoder=encoder_config("tiny"), mask_ratio=mask_ratio))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    loader = make_loader(train, batch_size, shuffle=True, seed=seed, drop_last=True)
    limit = f"{max_steps} steps" if max_steps else f"{seconds:.0f} s"
    print(
        f"[2/4] pretraining a tiny MAE ({count_parameters(model) / 1e6:.2f} M parameters) for {limit},"
        f" mask ratio {mask_ratio} ..."
    )
    losses: list[float] = []
    step, start = 0, time.time()
    bar = tqdm(total=max_steps, disable=not progress, unit="step", desc="MAE")
    done = False
    while not done:
        for batch in loader:
            model.train()
            res = model(batch["x"], batch["valid"], batch["time_valid"])
            opt.zero_grad(set_to_none=True)
            res.loss.backward()
            opt.step()
            step += 1
            if step % 5 == 0 or step == 1:
                losses.append(float(res.loss.detach()))  # logging at intervals only
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            bar.update()
            if (max_steps and step >= max_steps) or (not max_steps and time.time() - start > seconds):
                done = True
                break
    bar.close()

    print("[3/4] validating ...")
    model.eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        v = val[0:64]
        val_loss = float(model(v["x"], v["valid"], v["time_valid"], generator=g).loss)
    print(f"      validation MAE loss (normalised units) {val_loss:.4f}")

    print(f"[4/4] drawing a reconstructed event into {out}/ ...")
    rec = reconstruct(model, val, 0, mask_ratio, seed)
    fig = face_panels(
        {"masked input": rec["masked_input"], "truth": rec["truth"], "reconstruction": rec["reconstruction"]},
        "inner",
        title=f"Inner face, {mask_ratio:.0%} of valid sensors masked (grey): MAE after {step} steps",
    )
    fig.savefig(out / "reconstruction_inner.png", dpi=110)
    fig = event_display(
        rec["reconstruction"],
        dead=rec["dead"],
        masked=rec["mask"],
        title="Reconstructed event (white dots: sensors the model filled in)",
    )
    fig.savefig(out / "reconstruction_event.png", dpi=110)
    torch.save(model.state_dict(), out / "mae_tiny.pt")
    summary = {
        "steps": step,
        "train_loss": losses,
        "val_loss": val_loss,
        "seconds": time.time() - t0,
        "figures": ["reconstruction_inner.png", "reconstruction_event.png"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"done in {summary['seconds']:.0f} s: {out / 'reconstruction_inner.png'}")
    return summary
