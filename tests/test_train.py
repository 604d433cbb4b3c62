"""The training loop against independent references: hand-computed gradients, the EMA and schedule
formulas, an uninterrupted run for resume, and a single process for DDP."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from xecbench.train import (
    Config,
    ConfigError,
    NonFiniteLossError,
    Trainer,
    TrainingConfig,
    build_optimizer,
    build_scheduler,
    load_checkpoint,
    load_config,
    run_training,
)
from xecbench.train.distributed import DistInfo, shutdown

# record_steps wraps optimizer.step, which PyTorch's scheduler notices and warns about
pytestmark = pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")


class ToyData(Dataset):
    """y = x . w_true + noise, as dict items like the real datasets."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def toy_task(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    loss = ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()
    return loss, {}


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def toy_cfg(tmp_path: Path, **kw) -> TrainingConfig:
    base = dict(
        batch_size=8,
        epochs=1,
        lr=0.01,
        scheduler="none",
        ema_decay=None,
        grad_clip=None,
        log_every=1,
        run_dir=str(tmp_path / "run"),
        progress=False,
        weight_decay=0.0,
    )
    base.update(kw)
    return TrainingConfig(**base)


def record_steps(trainer: Trainer) -> list[dict]:
    """Wrap optimizer.step to record grads, params before/after and the lr of every optimiser step."""
    log: list[dict] = []
    original = trainer.optimizer.step

    def step(*a, **k):
        params = list(trainer.model.parameters())
        entry = {
            "grads": [p.grad.clone() for p in params],
            "before": [p.detach().clone() for p in params],
            "lr": trainer.optimizer.param_groups[0]["lr"],
        }
        out = original(*a, **k)
        entry["after"] = [p.detach().clone() for p in params]
        log.append(entry)
        return out

    trainer.optimizer.step = step
    return log


def batch_grads(model: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Reference: the gradient of the mean loss over (x, y) at the given parameter values."""
    with torch.no_grad():
        for p, v in zip(model.parameters(), params):
            p.copy_(v)
    model.zero_grad()
    ((model(x).squeeze(-1) - y) ** 2).mean().backward()
    return [p.grad.clone() for p in model.parameters()]


# ---------------------------------------------------------------------------------- accumulation


def test_accumulating_n_micro_batches_equals_one_big_batch(tmp_path):
    data = ToyData(32)
    big = Trainer(toy_model(), toy_task, data, None, toy_cfg(tmp_path, batch_size=32))
    small = Trainer(toy_model(), toy_task, data, None, toy_cfg(tmp_path, batch_size=8, grad_accum_steps=4))
    log_big, log_small = record_steps(big), record_steps(small)
    big.fit()
    small.fit()
    assert len(log_big) == len(log_small) == 1
    for a, b in zip(log_big[0]["grads"], log_small[0]["grads"]):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("clip", [None, 0.5])
def test_ragged_last_group_weighs_every_sample_the_same(tmp_path, clip):
    # 22 samples, batch 3, accumulation 3: batches 3 3 3 | 3 3 3 | 3 1 -> the last group has a full
    # batch and a one-sample batch; its update must be the big-batch update on those 4 samples
    data = ToyData(22)
    tr = Trainer(toy_model(), toy_task, data, None, toy_cfg(tmp_path, batch_size=3, grad_accum_steps=3, grad_clip=clip))
    log = record_steps(tr)
    tr.fit()
    assert len(log) == 3
    order = list(tr.sampler)
    ref_model = toy_model()
    for k, (first, last) in enumerate([(0, 9), (9, 18), (18, 22)]):
        idx = torch.tensor(order[first:last])
        ref = batch_grads(ref_model, log[k]["before"], data.x[idx], data.y[idx])
        if clip is not None:  # clipping acts on the group's gradient, as on the big batch's
            norm = torch.sqrt(sum((g**2).sum() for g in ref))
            ref = [g * min(1.0, clip / (float(norm) + 1e-6)) for g in ref]
        for a, b in zip(log[k]["grads"], ref):
            assert torch.allclose(a, b, atol=1e-6), k


def test_leftover_group_steps_with_its_true_size(tmp_path):
    data = ToyData(80)  # 10 batches of 8, accumulation 4 -> groups of 4, 4, 2
    tr = Trainer(toy_model(), toy_task, data, None, toy_cfg(tmp_path, grad_accum_steps=4))
    log = record_steps(tr)
    tr.fit()
    assert len(log) == 3 and tr.step == 3
    order = list(tr.sampler)  # the epoch's sample order
    ref_model = toy_model()
    for k, (first, last) in enumerate([(0, 32), (32, 64), (64, 80)]):
        idx = torch.tensor(order[first:last])
        # groups of equal-size micro-batches: the group mean equals the mean over its samples
        ref = batch_grads(ref_model, log[k]["before"], data.x[idx], data.y[idx])
        for a, b in zip(log[k]["grads"], ref):
            assert torch.allclose(a, b, atol=1e-6), k


# ------------------------------------------------------------------------------------------ EMA


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_follows_the_formula(tmp_path, warmup):
    d = 0.9
    cfg = toy_cfg(tmp_path, ema_decay=d, ema_warmup=warmup, epochs=2)
    tr = Trainer(toy_model(), toy_task, ToyData(40), None, cfg)
    log = record_steps(tr)
    tr.fit()
    ema = None
    for k, entry in enumerate(log, start=1):  # first update copies, then e = d_k e + (1 - d_k) theta
        theta = entry["after"]
        dk = min(d, (1 + k) / (10 + k)) if warmup else d  # TensorFlow's warm-up, per optimiser step k
        ema = [t.clone() for t in theta] if ema is None else [dk * e + (1 - dk) * t for e, t in zip(ema, theta)]
    for e, p in zip(ema, tr.ema.module.parameters()):
        assert torch.allclose(e, p, atol=1e-6)
    # and the checkpoint exports the EMA weights for inference
    from xecbench.train import inference_weights

    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    w = inference_weights(state)
    assert torch.allclose(w["0.weight"], tr.ema.module.state_dict()["0.weight"])
    assert not torch.allclose(w["0.weight"], state["model"]["0.weight"])


# ------------------------------------------------------------------------------------ schedules


def test_cosine_schedule_with_warmup_matches_formula(tmp_path):
    cfg = toy_cfg(tmp_path, scheduler="cosine", lr=0.1, lr_min=0.01, warmup_epochs=1.0, epochs=4)
    tr = Trainer(toy_model(), toy_task, ToyData(24), None, cfg)  # 3 batches -> 3 steps per epoch
    log = record_steps(tr)
    tr.fit()
    spe, W = 3, 3
    expected = []
    for s in range(12):
        if s < W:
            expected.append(0.1 * (s + 1) / W)
        else:
            t = (s / spe - 1.0) / (4 - 1.0)
            expected.append(0.01 + 0.5 * (0.1 - 0.01) * (1 + math.cos(math.pi * t)))
    assert [e["lr"] for e in log] == pytest.approx(expected, rel=1e-9)


def test_onecycle_counts_optimiser_steps_with_a_leftover_group(tmp_path):
    # 10 batches with accumulation 4: 3 optimiser steps per epoch (the last group is short)
    cfg = toy_cfg(tmp_path, scheduler="onecycle", lr=0.1, max_lr=0.2, pct_start=0.3, grad_accum_steps=4, epochs=3)
    tr = Trainer(toy_model(), toy_task, ToyData(80), None, cfg)
    log = record_steps(tr)
    tr.fit()  # would raise if OneCycleLR were stepped past total_steps
    total = 9
    initial, peak, floor = 0.2 / 25, 0.2, 0.2 / 25 / 1e4
    up = 0.3 * total - 1

    def anneal(a, b, t):
        return b + (a - b) / 2 * (1 + math.cos(math.pi * t))

    expected = [
        anneal(initial, peak, s / up) if s <= up else anneal(peak, floor, (s - up) / (total - 1 - up))
        for s in range(total)
    ]
    assert [e["lr"] for e in log] == pytest.approx(expected, rel=1e-6)


def test_plateau_and_none(tmp_path):
    cfg = toy_cfg(tmp_path, scheduler="plateau", lr=1.0, lr_patience=1, lr_factor=0.5, lr_min=0.3)
    opt = build_optimizer(toy_model(), cfg, 1)
    sched = build_scheduler(opt, cfg, 1)
    lrs = []
    for val_loss in [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0]:
        sched.step(val_loss)
        lrs.append(opt.param_groups[0]["lr"])
    # best 0.9 at epoch 2; two epochs without improvement (> patience 1) halve, with floor 0.3
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5, 0.3, 0.3, 0.3])
    cfg = toy_cfg(tmp_path, scheduler="none", lr=0.05, epochs=2)
    tr = Trainer(toy_model(), toy_task, ToyData(16), None, cfg)
    log = record_steps(tr)
    tr.fit()
    assert [e["lr"] for e in log] == [0.05] * 4


def test_plateau_steps_on_validation_loss(tmp_path, monkeypatch):
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    seen = []
    original = ReduceLROnPlateau.step
    monkeypatch.setattr(ReduceLROnPlateau, "step", lambda self, m, *a: (seen.append(m), original(self, m, *a))[1])
    cfg = toy_cfg(tmp_path, scheduler="plateau", lr=1.0, lr_patience=0, lr_factor=0.5, epochs=3)
    tr = Trainer(toy_model(), toy_task, ToyData(16), ToyData(8, seed=1), cfg)
    tr.fit()
    epochs = [r for r in tr.history if r["kind"] == "epoch"]
    assert seen == [r["val_loss"] for r in epochs]


# ---------------------------------------------------------------------------- optimiser modes


def test_schedulefree_switches_to_eval_for_validation_and_checkpoints(tmp_path):
    cfg = toy_cfg(tmp_path, optimizer="schedulefree_adamw", scheduler="none", lr=0.01, epochs=2)
    tr = Trainer(toy_model(), toy_task, ToyData(16), ToyData(8, seed=1), cfg)
    modes = []
    original_eval = tr.evaluate
    tr.evaluate = lambda *a, **k: (modes.append(tr.optimizer.param_groups[0]["train_mode"]), original_eval(*a, **k))[1]
    tr.fit()
    assert modes == [False, False]  # validated in eval mode
    assert tr.optimizer.param_groups[0]["train_mode"] is True  # back to train mode afterwards
    with pytest.raises(ConfigError, match="scheduler must be 'none' with training.optimizer=schedulefree_adamw"):
        Trainer(
            toy_model(),
            toy_task,
            ToyData(16),
            None,
            toy_cfg(tmp_path, optimizer="schedulefree_adamw", scheduler="cosine"),
        )


def test_dadaptation_adapts_its_step_size(tmp_path, capsys):
    cfg = toy_cfg(tmp_path, optimizer="dadapt_adam", lr=1.0, epochs=3, weight_decay=0.01)
    tr = Trainer(toy_model(), toy_task, ToyData(64), ToyData(32, seed=1), cfg)
    group = tr.optimizer.param_groups[0]
    assert type(tr.optimizer).__name__ == "DAdaptAdam" and group["decouple"] and group["lr"] == 1.0
    assert group["d"] == pytest.approx(1e-6)
    tr.fit()
    assert group["d"] > 1e-3  # the step size was estimated, not given
    assert all(math.isfinite(r["loss"]) for r in tr.history if r["kind"] == "step")
    assert capsys.readouterr().out == ""  # the package's constructor print is kept out of notebooks


def test_bf16_autocast_runs_on_cpu(tmp_path):
    model = toy_model()
    dtypes = []
    model[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    tr = Trainer(model, toy_task, ToyData(16), None, toy_cfg(tmp_path, amp="bf16"))
    assert tr.amp_dtype == torch.bfloat16 and not tr.scaler.is_enabled()
    tr.fit()
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert Trainer(toy_model(), toy_task, ToyData(8), None, toy_cfg(tmp_path)).amp_dtype is None  # auto: off on CPU


# ------------------------------------------------------------------------------ failure & files


def test_nan_weights_behind_a_finite_loss_stop_the_run(tmp_path):
    def sneaky_task(model, batch):
        loss, faces = toy_task(model, batch)
        w = model[0].weight
        # value 0, gradient NaN (d sqrt at 0); nan_to_num keeps the loss finite once the weights are NaN
        return torch.nan_to_num(loss + 0 * torch.sqrt((0 * w).pow(2).sum()), nan=1.0), faces

    tr = Trainer(toy_model(), sneaky_task, ToyData(32), None, toy_cfg(tmp_path, epochs=2, log_every=2))
    with pytest.raises(NonFiniteLossError, match=r"model weights became NaN/inf by optimiser step 2 .*0\.weight"):
        tr.fit()


def test_nan_loss_stops_with_step_and_checkpoint(tmp_path):
    calls = {"n": 0}

    def bad_task(model, batch):
        calls["n"] += 1
        loss, faces = toy_task(model, batch)
        return (loss * float("nan") if calls["n"] == 7 else loss), faces

    tr = Trainer(toy_model(), bad_task, ToyData(32), None, toy_cfg(tmp_path, epochs=3, log_every=100))
    with pytest.raises(
        NonFiniteLossError, match=r"optimiser step 7 \(epoch 2\); last good checkpoint: .*checkpoint.pt"
    ):
        tr.fit()


def test_metrics_files_and_callbacks(tmp_path):
    seen = []
    tr = Trainer(
        toy_model(),
        toy_task,
        ToyData(16),
        ToyData(8, seed=1),
        toy_cfg(tmp_path, epochs=2),
        callbacks=[lambda kind, trainer, row: seen.append((kind, row["step"]))],
    )
    tr.fit()
    assert seen == [("step", 1), ("step", 2), ("epoch", 2), ("step", 3), ("step", 4), ("epoch", 4)]
    run = tmp_path / "run"
    import csv
    import json

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and "val_loss" in rows[0]
    assert len(json.loads((run / "metrics.json").read_text())) == 6
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "metrics.csv", "metrics.json"]


# -------------------------------------------------------------------------------------- resume


def _mae_config(tmp_path: Path, epochs: int, run: str) -> Config:
    return load_config(
        "configs/mae_tiny.yaml",
        [
            f"training.epochs={epochs}",
            "data.n_train=48",
            "data.n_val=16",
            "training.batch_size=16",
            "training.log_every=1",
            f"training.run_dir={tmp_path / run}",
            "training.progress=false",
            "training.warmup_epochs=1",
            "training.ema_decay=0.9",
        ],
    )


def test_resume_continues_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    straight = run_training(_mae_config(tmp_path, 3, "a"))
    run_training(_mae_config(tmp_path, 1, "b"))  # stops after epoch 1 and leaves a checkpoint
    resumed = run_training(_mae_config(tmp_path, 3, "b"), resume=tmp_path / "b" / "checkpoint.pt")
    assert [r for r in resumed.history] == [r for r in straight.history]
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------- config


def test_bad_config_errors_name_the_key(tmp_path):
    cases = {
        "training.lr_mn=1": r"unknown key 'training.lr_mn'.*did you mean 'training.lr_min'\?",
        "training.scheduler=cosin": (
            r"training.scheduler must be one of \['cosine', 'onecycle', 'plateau', 'none'\].*did you mean 'cosine'"
        ),
        "training.lr=fast": r"training.lr must be of type float, got 'fast'",
        "training.lr=0": r"training.lr must be in \(0.0, inf\], got 0.0",
        "training.batch_size=0": r"training.batch_size must be in \[1, inf\]",
        "training.epochs=1.5": r"training.epochs must be of type int",
        "model.mask_ratio=1.5": r"model.mask_ratio must be in \(0.0, 1.0\)",
        "model.posenc=relative": r"model.posenc must be one of .*'rope', 'alibi'",
        "trainin.lr=1": r"unknown key 'trainin'.*did you mean 'training'",
        "model.channel_weights=[1]": r"model.channel_weights must have 2 values",
        "training.optimizer=sgd": r"training.optimizer must be one of \['adamw', 'schedulefree_adamw', 'dadapt_adam'\]",
        "training": r"override 'training' must look like section.key=value",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])
    cfg = load_config(None, ["training.lr=1e-3", "training.ema_decay=null", "model.channel_weights=[1, 0.5]"])
    assert cfg.training.lr == 1e-3 and cfg.training.ema_decay is None and cfg.model.channel_weights == (1.0, 0.5)
    with pytest.raises(ConfigError, match="training.amp='fp16' needs CUDA"):
        Trainer(toy_model(), toy_task, ToyData(8), None, toy_cfg(tmp_path, amp="fp16"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="training.device='cuda' but CUDA is not available"):
            Trainer(toy_model(), toy_task, ToyData(8), None, toy_cfg(tmp_path, device="cuda"))
    with pytest.raises(FileNotFoundError, match="config file nope.yaml not found"):
        load_config("nope.yaml")


def test_iterable_training_data_is_refused(tmp_path):
    from xecbench.data import SimulatedStream

    with pytest.raises(TypeError, match="Trainer needs a map-style training set .* got SimulatedStream"):
        Trainer(toy_model(), toy_task, SimulatedStream(10), None, toy_cfg(tmp_path))


def test_shipped_configs_load(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1] / "configs"
    monkeypatch.chdir(tmp_path)  # no runs/ here: the inpainting configs name an MAE not trained yet
    tasks = {}
    for path in sorted(root.glob("*.yaml")):
        if path.name in ("inpaint.yaml", "inpaint_tiny.yaml", "regress.yaml"):  # start from an MAE checkpoint
            with pytest.raises(ConfigError, match="not found: train the MAE first"):
                load_config(path)
            cfg = load_config(path, ["model.init_from=null", "model.freeze_encoder=false"])
        else:
            cfg = load_config(path)
        tasks[path.stem] = cfg.model.task
    assert tasks == {
        "mae": "mae",
        "mae_tiny": "mae",
        "inpaint": "inpaint",
        "inpaint_tiny": "inpaint",
        "regress": "regress",
        "regress_tiny": "regress",
    }


# ---------------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg = toy_cfg(Path(out), batch_size=4, grad_accum_steps=2, epochs=2, lr=0.05)
    tr = Trainer(toy_model(), toy_task, ToyData(32), None, cfg, dist_info=DistInfo(rank, world, rank))
    tr.fit()
    torch.save([p.detach() for p in tr.model.parameters()], Path(out) / f"params_{rank}.pt")
    shutdown()


@pytest.mark.slow
def test_ddp_two_cpu_processes_equal_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    p0 = torch.load(tmp_path / "params_0.pt")
    p1 = torch.load(tmp_path / "params_1.pt")
    # one process, global batch of 2 x 4 per micro-batch, the same sample order
    single = Trainer(
        toy_model(),
        toy_task,
        ToyData(32),
        None,
        toy_cfg(tmp_path / "single", batch_size=8, grad_accum_steps=2, epochs=2, lr=0.05),
    )
    single.fit()
    for a, b, c in zip(p0, p1, single.model.parameters()):
        assert torch.equal(a, b)  # ranks stay in sync
        assert torch.allclose(a, c.detach(), atol=1e-6)
    # rank 0 alone wrote the checkpoint and metrics
    assert (tmp_path / "run" / "checkpoint.pt").exists()


# ------------------------------------------------------------------------------- weight decay


def test_weight_decay_spares_biases_norms_grn_posenc_and_mask_tokens():
    from xecbench.nn import XECMAE, MAEConfig, encoder_config
    from xecbench.train.optim import param_groups

    model = XECMAE(MAEConfig(encoder=encoder_config("tiny", hex_op="attention")))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    by_id = {id(p): n for n, p in model.named_parameters()}
    spared = {by_id[id(p)] for p in no_decay["params"]}
    decayed = {by_id[id(p)] for p in decay["params"]}
    assert spared.isdisjoint(decayed) and spared | decayed == set(by_id.values())
    # an independent list of what must not decay, by kind of module and by name
    must_spare = set()
    for mname, m in model.named_modules():
        for pname, _ in m.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if isinstance(m, nn.LayerNorm) or pname in ("bias", "gamma", "beta", "table", "mask_token", "dir_emb"):
                must_spare.add(full)
    assert must_spare <= spared
    assert "encoder.fusion.posenc.table" in spared and "decoders.inner.mask_token" in spared
    assert any(n.endswith("grn.gamma") for n in spared)
    # and every conv / linear kernel decays
    kernels = {
        f"{mn}.weight" for mn, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d) and m.weight.ndim >= 2
    }
    assert kernels <= decayed


def test_num_workers_reach_the_loader(tmp_path):
    cfg = Config()
    cfg.data.num_workers = 2
    tr = Trainer(toy_model(), toy_task, ToyData(16), None, toy_cfg(tmp_path), config=cfg)
    assert tr.loader.num_workers == 2
    tr.fit()  # and training runs with worker processes
    assert tr.step == 2


def test_masks_do_not_depend_on_the_number_of_workers(tmp_path):
    """Tasks draw masks from the global RNG; the data loader must not consume it differently with
    worker processes (persistent or not), or runs and resumes would change with data.num_workers."""

    def draws(workers: int) -> list[float]:
        seen = []

        def task(model, batch):
            seen.append(float(torch.rand(())))
            return toy_task(model, batch)

        cfg = Config()
        cfg.data.num_workers = workers
        Trainer(toy_model(), task, ToyData(16), None, toy_cfg(tmp_path, epochs=3), config=cfg).fit()
        return seen

    assert draws(0) == draws(2)


@pytest.mark.parametrize("task", ["inpaint", "regress"])
def test_init_from_an_mae_with_another_head_width(task, tmp_path):
    """The downstream model takes the MAE's encoder whatever the MAE's decoder width: the MAE is
    rebuilt as its checkpoint's config says, its weights load, and the encoder is the MAE's."""
    from xecbench.train import build_model

    mae_cfg = load_config(None, ["model.head_width=8"])
    torch.manual_seed(3)
    mae = build_model(mae_cfg.model)
    state = {"model": mae.state_dict(), "ema": None, "epoch": 1, "step": 1, "config": mae_cfg.to_dict()}
    torch.save(state, tmp_path / "mae.pt")
    cfg = load_config(None, [f"model.task={task}", f"model.init_from={tmp_path / 'mae.pt'}", "model.head_width=24"])
    model = build_model(cfg.model)
    for name, value in mae.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], value), name


# ---------------------------------------------------------------------- layer-wise learning-rate decay


def _lr_of(optimizer, model):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_layer_decay_scales_the_encoder_by_depth(scheduler):
    from xecbench.nn import XECMAE
    from xecbench.nn.regress import XECRegressor
    from xecbench.train.optim import build_optimizer, build_scheduler

    model = XECRegressor(XECMAE().encoder, targets=("energy",))
    cfg = TrainingConfig(lr=1e-3, layer_decay=0.5, scheduler=scheduler, epochs=2, warmup_epochs=0.0)
    opt = build_optimizer(model, cfg, steps_per_epoch=4)
    sched = build_scheduler(opt, cfg, steps_per_epoch=4)
    # tiny preset: 2 stages, 2 fusion layers -> levels stem 0, stages 1-2, face token 3, fusion 4-5, norm 5; L = 6
    want = {
        "encoder.faces.inner.stem.weight": 0.5**6,
        "encoder.faces.inner.stages.0.0.dwconv.weight": 0.5**5,
        "encoder.faces.inner.downs.1.conv.weight": 0.5**4,
        "encoder.faces.top.blocks.0.spatial.weight": 0.5**5,
        "encoder.faces.outer.head.weight": 0.5**3,
        "encoder.fusion.posenc.table": 0.5**3,
        "encoder.fusion.layers.0.attn.qkv.weight": 0.5**2,
        "encoder.fusion.layers.1.attn.qkv.weight": 0.5**1,
        "encoder.fusion.norm.weight": 0.5**1,
        "heads.energy.0.weight": 1.0,
    }
    names = dict(model.named_parameters())
    for step in range(3):
        lr = _lr_of(opt, model)
        base = lr["heads.energy.0.weight"]
        for name, scale in want.items():
            assert name in names, name
            assert lr[name] == pytest.approx(base * scale, rel=1e-9), (step, name)
        assert opt.param_groups[0]["lr"] == base  # the logged rate is the heads' (the base) rate
        opt.step()
        sched.step()


def test_without_layer_decay_there_are_two_groups():
    from xecbench.nn import XECMAE
    from xecbench.train.optim import build_optimizer

    model = XECMAE()
    opt = build_optimizer(model, TrainingConfig(lr=2e-3), steps_per_epoch=4)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert {g["lr"] for g in opt.param_groups} == {2e-3}


@pytest.mark.slow
def test_compiled_training_steps_equal_eager_ones(tmp_path):
    """training.compile: the compiled steps move the model's own weights as the eager steps do, and
    the checkpoint holds the plain model (no torch.compile wrapper in its keys)."""
    eager = Trainer(toy_model(), toy_task, ToyData(32), None, toy_cfg(tmp_path / "a"))
    compiled = Trainer(toy_model(), toy_task, ToyData(32), None, toy_cfg(tmp_path / "b", compile=True))
    eager.fit()
    compiled.fit()
    assert compiled.net is not compiled.model
    for a, b in zip(eager.model.parameters(), compiled.model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(next(toy_model().parameters()), next(compiled.model.parameters()))  # it trained
    state = load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")
    assert set(state["model"]) == set(eager.model.state_dict())


def test_adamw_runs_fused_on_cpu_and_steps_like_the_textbook_update(tmp_path):
    """The fused AdamW kernel on a CPU model; one step from zero moments moves each weight by
    lr * (g / (|g| + eps)) + lr * wd * w (decoupled decay), computed here by hand."""
    cfg = toy_cfg(tmp_path, lr=0.01, weight_decay=0.1)
    model = toy_model()
    opt = build_optimizer(model, cfg, 1)
    assert opt.defaults["fused"] is True
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    opt.step()
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        w = before[n]
        # bias-corrected first step: m_hat = g, v_hat = g^2
        want = w * (1 - 0.01 * wd[id(p)]) - 0.01 * 0.5 / (0.5 + 1e-8)
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("suffix", "n_train", "n_val", "val_file"),
    [(".root", 100, 50, False), (".root", 1000, 50, False), (".npz", 100, 200, False), (".root", 1000, 50, True)],
)
def test_a_file_source_reads_only_the_events_the_run_uses(tmp_path, uproot_reads, suffix, n_train, n_val, val_file):
    import numpy as np

    from xecbench.data import Normalizer, save_npz, simulate, write_root
    from xecbench.train import build_datasets
    from xecbench.train.config import config_from_dict

    events, other = simulate(300, seed=5), simulate(80, seed=6)
    path = (write_root if suffix == ".root" else save_npz)(tmp_path / f"run{suffix}", events)
    data = {"source": str(path), "n_train": n_train, "n_val": n_val}
    if val_file:
        data["val_source"] = str(write_root(tmp_path / "val.root", other))
    asked = uproot_reads
    train, val = build_datasets(config_from_dict({"model": {"preset": "tiny"}, "data": data}))
    # by hand: validation is all of val_source, else the file's last n_val events (at most half of
    # it); training the first n_train events before them
    n_v = 0 if val_file else min(n_val, 150)
    n = min(n_train, 300 - n_v)
    want_val = other if val_file else {k: v[300 - n_v :] for k, v in events.items()}
    if suffix == ".root":
        assert sorted(asked) == ([(0, 80), (0, n)] if val_file else [(0, n), (300 - n_v, 300)])
    assert torch.equal(train.tensors["event"], torch.as_tensor(events["event"][:n]))
    ref_x, _, _ = Normalizer()(events["npho"][:n], events["relative_time"][:n])
    assert torch.equal(train.tensors["x"], ref_x)
    assert torch.equal(val.tensors["event"], torch.as_tensor(want_val["event"]))
    # the Poisson floor's per-sensor truth where the evaluation looks (validation), not in training
    assert "nphoExpected" in val.tensors and "nphoExpected" not in train.tensors
    assert np.array_equal(val.tensors["nphoExpected"].numpy(), want_val["nphoExpected"])
