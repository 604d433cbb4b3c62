"""Bad input, as a new user would type it: every row must end in one line on stderr that names the
problem, with exit status 2 (usage and config errors) or 1 (failures while running), never a traceback
or a silently wrong result. Rows are (arguments, message fragment, exit status); ``{d}`` is a folder of
prepared files (see the ``files`` fixture)."""

import shlex
import shutil

import pytest
import torch

from xecbench.cli import main
from xecbench.data import save_npz, simulate, write_root
from xecbench.train import NonFiniteLossError, build_model, load_config

TINY = "--set data.n_train=8 --set data.n_val=4 --set training.epochs=1 --set training.batch_size=8"
TRAIN = "train {d}/ok.yaml " + TINY
RESUME = TRAIN + " --set training.run_dir={d}/run --resume {d}/run/checkpoint.pt"
CKPT = "{d}/inpaint.pt"

ROWS = [
    # ---- config values, one key at a time
    (TRAIN + " --set training.lr=-1", "training.lr must be in (0.0, inf], got -1.0", 2),
    (TRAIN + " --set training.lr=.nan", "training.lr must be a finite number, got nan", 2),
    (TRAIN + " --set training.lr=nan", "training.lr must be a finite number, got 'nan'", 2),
    (TRAIN + " --set training.lr=inf", "training.lr must be a finite number", 2),
    (TRAIN + " --set training.lr=fast", "training.lr must be of type float, got 'fast'", 2),
    (TRAIN + " --set training.ema_decay=1.0", "training.ema_decay must be in [0.0, 1.0), got 1.0", 2),
    (TRAIN + " --set training.ema_decay=.nan", "training.ema_decay must be a finite number", 2),
    (TRAIN + " --set training.ema_decay=-0.5", "training.ema_decay must be in [0.0, 1.0)", 2),
    (TRAIN + " --set model.mask_ratio=0", "model.mask_ratio must be in (0.0, 1.0), got 0.0", 2),
    (TRAIN + " --set model.mask_ratio=1", "model.mask_ratio must be in (0.0, 1.0), got 1.0", 2),
    (TRAIN + " --set model.mask_ratio=.nan", "model.mask_ratio must be a finite number", 2),
    (TRAIN + " --set model.inpaint_mask_ratio=0", "model.inpaint_mask_ratio must be in (0.0, 1.0)", 2),
    (TRAIN + " --set model.inpaint_mask_ratio=1", "model.inpaint_mask_ratio must be in (0.0, 1.0)", 2),
    (TRAIN + " --set model.token_dim=0", "model.token_dim must be in [1, inf], got 0", 2),
    (TRAIN + " --set model.token_dim=30", "model.token_dim must be a multiple of 4", 2),
    (TRAIN + " --set training.max_lr=-1", "training.max_lr must be in (0.0, inf], got -1.0", 2),
    (TRAIN + " --set model.channel_weights=[0,0]", "model.channel_weights (npho, time) must both be >= 0 and not", 2),
    (TRAIN + " --set model.channel_weights=[-1,1]", "model.channel_weights (npho, time) must both be >= 0", 2),
    (TRAIN + " --set model.channel_weights=[1,.inf]", "model.channel_weights must be a finite number", 2),
    (TRAIN + " --set model.channel_weights=[1]", "model.channel_weights must have 2 values", 2),
    (
        TRAIN + " --set training.scheduler=onecycle --set training.pct_start=1",
        "training.pct_start must be in (0.0, 1.0) with scheduler onecycle, got 1.0",
        2,
    ),
    (TRAIN + " --set training.scheduler=onecycle --set training.pct_start=0", "training.pct_start must be in", 2),
    (TRAIN + " --set training.lr_factor=1", "training.lr_factor must be in (0.0, 1.0)", 2),
    (TRAIN + " --set training.lr_min=0.5", "training.lr_min (0.5) must not exceed training.lr (0.001)", 2),
    (TRAIN + " --set training.warmup_epochs=-1", "training.warmup_epochs must be in [0.0, inf]", 2),
    (TRAIN + " --set training.grad_clip=0", "training.grad_clip must be in (0.0, inf]", 2),
    (TRAIN + " --set training.batch_size=-4", "training.batch_size must be in [1, inf], got -4", 2),
    (TRAIN + " --set training.epochs=0", "training.epochs must be in [1, inf], got 0", 2),
    (TRAIN + " --set training.epochs=1.5", "training.epochs must be of type int", 2),
    (TRAIN + " --set data.n_train=0", "data.n_train must be in [1, inf], got 0", 2),
    (TRAIN + " --set data.seed=-1", "data.seed must be in [0, inf], got -1", 2),
    (TRAIN + " --set data.random_dead_fraction=1", "data.random_dead_fraction must be in [0.0, 1.0)", 2),
    (TRAIN + " --set data.npho_scale=0", "data.npho_scale must be in (0.0, inf]", 2),
    (TRAIN + " --set data.time_shift=.nan", "data.time_shift must be a finite number", 2),
    (TRAIN + " --set training.scheduler=cosin", "training.scheduler must be one of", 2),
    (TRAIN + " --set training.scheduler=cosin", "did you mean 'cosine'?", 2),
    (TRAIN + " --set training.optimizer=sgd", "training.optimizer must be one of ['adamw', 'schedulefree_adamw'", 2),
    (
        TRAIN + " --set training.optimizer=schedulefree_adamw",
        "training.scheduler must be 'none' with training.optimizer=schedulefree_adamw",
        2,
    ),
    (TRAIN + " --set training.device=gpu", "training.device must be auto, cpu, mps, cuda or cuda:N, got 'gpu'", 2),
    (TRAIN + " --set training.progress=maybe", "training.progress must be of type bool", 2),
    (TRAIN + " --set 'training.run_dir=\"\"'", "training.run_dir must not be empty", 2),
    (TRAIN + " --set training.run_dir=", "training.run_dir must be of type str, got None", 2),
    # ---- data sources
    (TRAIN + " --set data.source=simulat", "did you mean 'simulate'?", 2),
    (TRAIN + " --set data.source={d}/missing.root", "data.source: data file {d}/missing.root not found", 2),
    (TRAIN + " --set data.source={d}/missing.npz", "data file {d}/missing.npz not found", 2),
    (TRAIN + " --set data.source={d}/events.csv", "data.source must be 'simulate' or a path ending in .root or", 2),
    (TRAIN + " --set data.val_source={d}/events.npz", "data.val_source is only used with a file as data.source", 2),
    (TRAIN + " --set data.source={d}/junk.npz", "junk.npz cannot be read as an .npz file", 2),
    (TRAIN + " --set data.source={d}/truncated.root", "truncated.root: reading tree 'tree' failed", 2),
    (
        TRAIN + " --set data.source={d}/events.npz --set data.val_source={d}/missing.npz",
        "data.val_source: data file {d}/missing.npz not found",
        2,
    ),
    (
        TRAIN + " --set data.source={d}/events.npz --set data.val_source={d}/events.txt",
        "data.val_source must be a path ending in .root or .npz, got",
        2,
    ),
    (TRAIN + " --set model.preset=huge", "model.preset must be one of ['tiny', 'base'], got 'huge'", 2),
    (TRAIN + " --set model.head_width=0", "model.head_width must be in [1, inf], got 0", 2),
    (TRAIN + " --set model.freeze_encoder=2", "model.freeze_encoder must be of type bool, got 2", 2),
    (TRAIN + " --set training.grad_accum_steps=0", "training.grad_accum_steps must be in [1, inf]", 2),
    (TRAIN + " --set training.layer_decay=0", "training.layer_decay must be in (0.0, 1.0], got 0.0", 2),
    (TRAIN + " --set training.layer_decay=1.5", "training.layer_decay must be in (0.0, 1.0], got 1.5", 2),
    # ---- keys that depend on each other
    (TRAIN + " --set model.task=inpaint", "the heads train on a random frozen encoder", 2),
    (TRAIN + " --set model.task=inpaint", "model.init_from=runs/mae_tiny/checkpoint.pt", 2),
    (TRAIN + " --set model.init_from={d}/inpaint.pt", "model.init_from is only used with model.task=inpaint", 2),
    (
        TRAIN + " --set model.task=inpaint --set model.init_from={d}/nope.pt",
        "model.init_from={d}/nope.pt not found",
        2,
    ),
    pytest.param(  # an inpainter checkpoint is not an MAE: build_model names the mismatch
        TRAIN + " --set model.task=inpaint --set model.init_from={d}/inpaint.pt",
        "model.init_from",
        2,
    ),
    (TRAIN + " --set data.source={d}/one.npz", "has 1 events; need at least 2", 2),
    # ---- regression
    (TRAIN + " --set model.task=regress", "model.task=regress with model.freeze_encoder=true needs model.init_from", 2),
    (
        TRAIN + " --set model.task=regress --set model.freeze_encoder=false --set model.targets=[mass]",
        "model.targets must be distinct names from ['energy', 'uvw', 'direction', 'time'], got ['mass']",
        2,
    ),
    (
        TRAIN + " --set model.task=regress --set model.freeze_encoder=false --set model.target_weights=[1]",
        "model.target_weights must give one weight >= 0 per target ['energy', 'uvw'], got [1.0]",
        2,
    ),
    (
        TRAIN + " --set model.task=regress --set model.freeze_encoder=false --set model.regress_loss=huber",
        "model.regress_loss must be one of ['smooth_l1', 'l1', 'mse', 'gaussian_nll'], got 'huber'",
        2,
    ),
    (
        TRAIN + " --set model.task=regress --set model.freeze_encoder=false --set data.source={d}/notruth.npz",
        "lacks the truth branch energyTruth that model.targets ['energy', 'uvw'] needs",
        2,
    ),
    (
        TRAIN + " --set data.fiducial=true --set data.source={d}/notruth.npz",
        "data.fiducial needs the truth branch uvwTruth, which {d}/notruth.npz does not have",
        2,
    ),
    (TRAIN + " --set data.source={d}/dead.npz", "no event has a valid sensor", 2),
    (TRAIN + " --set training.run_dir={d}/ok.yaml", "training.run_dir={d}/ok.yaml is a file", 2),
    (TRAIN + " --set training.device=mps", "has no MPS", 2),
    (
        TRAIN + " --set model.task=inpaint --set model.init_from={d}/run/checkpoint.pt --set data.npho_scheme=sqrt",
        "was trained on data normalised as",
        2,
    ),
    # ---- config files and override syntax
    ("train {d}/nope.yaml", "config file {d}/nope.yaml not found", 2),
    ("train {d}", "config file {d} is not a file", 2),
    ("train {d}/empty.yaml", "config file {d}/empty.yaml is empty", 2),
    ("train {d}/comments.yaml", "config file {d}/comments.yaml is empty", 2),
    ("train {d}/syntax.yaml", "config file {d}/syntax.yaml: invalid YAML at line 3, column 2", 2),
    ("train {d}/bracket.yaml", "(while parsing a flow sequence at line 3)", 2),
    ("train {d}/list.yaml", "config file {d}/list.yaml must be a mapping with sections", 2),
    ("train {d}/list.yaml --set training.lr=1", "config file {d}/list.yaml must be a mapping", 2),
    ("train {d}/scalar.yaml", "config file {d}/scalar.yaml must be a mapping", 2),
    ("train {d}/badsection.yaml", "section model must be a mapping", 2),
    ("train {d}/unknown.yaml", "unknown key 'training.lr_mn'", 2),
    (TRAIN + " --set training.lr", "override 'training.lr' must look like section.key=value", 2),
    (TRAIN + " --set =3", "override '=3' must look like section.key=value", 2),
    (TRAIN + " --set training..lr=3", "must look like section.key=value", 2),
    (TRAIN + " --set training.lr_mn=1", "unknown key 'training.lr_mn'", 2),
    (TRAIN + " --set training.lr_mn=1", "did you mean 'training.lr_min'?", 2),
    (TRAIN + " --set trainin.lr=1", "did you mean 'training'?", 2),
    (TRAIN + " --set training.lr=[1", "override 'training.lr=[1': the value is not valid YAML", 2),
    (TRAIN + " --set training.lr.x=1", "training.lr must be of type float", 2),
    (TRAIN + " --set model=3", "section model must be a mapping, got 3", 2),
    (TRAIN + " --set training.progress.x=1", "override 'training.progress.x=1': 'progress' is not a section", 2),
    (TRAIN + " --set model.task.x=1", "model.task must be of type str, got {{'x': 1}} (dict)", 2),
    ("train", "the following arguments are required: config", 2),
    ("train {d}/ok.yaml --sett x=1", "unrecognized arguments: --sett", 2),
    # ---- resume
    (TRAIN + " --resume {d}/missing.pt", "checkpoint {d}/missing.pt not found", 2),
    (TRAIN + " --resume {d}/events.csv", "events.csv cannot be read as a checkpoint", 2),
    (TRAIN + " --resume {d}/notckpt.pt", "notckpt.pt is not an xecbench checkpoint", 2),
    (RESUME + " --set model.token_dim=64", "run/checkpoint.pt was trained with a different model:", 2),
    (RESUME + " --set model.token_dim=64", "the configs differ in model.token_dim (checkpoint None, now 64)", 2),
    (RESUME + " --set model.token_dim=64", "tensors differ in shape, 0 are missing and 0 are unexpected", 2),
    (RESUME + " --set training.lr=1e6", "training.lr (checkpoint 0.001, now 1000000.0)", 2),
    (RESUME + " --set training.weight_decay=0", "cannot resume from {d}/run/checkpoint.pt with a changed", 2),
    (RESUME + " --set training.scheduler=none", "training.scheduler (checkpoint 'cosine', now 'none')", 2),
    (RESUME + " --set data.n_val=5", "data.n_val (checkpoint 4, now 5)", 2),
    (RESUME + " --set model.mask_ratio=0.5", "model.mask_ratio (checkpoint 0.6, now 0.5)", 2),
    (RESUME + " --set training.epochs=1 --set training.batch_size=4", "training.batch_size (checkpoint 8", 2),
    # ---- simulate
    ("simulate 0 --out {d}/s.npz", "xecbench simulate: n (the number of events) must be >= 1, got 0", 2),
    ("simulate -5 --out {d}/s.npz", "n (the number of events) must be >= 1, got -5", 2),
    ("simulate 5 --out {d}/s.csv", "--out must end in .root or .npz, got {d}/s.csv", 2),
    ("simulate 5 --out {d}/s.npz --random-dead 1.5", "--random-dead must be in [0, 1), got 1.5", 2),
    ("simulate 5 --out {d}/s.npz --random-dead nan", "--random-dead must be in [0, 1), got nan", 2),
    ("simulate 5 --out {d}/s.npz --seed -1", "--seed must be >= 0, got -1", 2),
    ("simulate abc --out {d}/s.npz", "argument n: invalid int value: 'abc'", 2),
    ("simulate 5", "the following arguments are required: --out", 2),
    ("simulate 5 --out {d}/s.npz --spectrum wide", "argument --spectrum: invalid choice: 'wide'", 2),
    # ---- display
    ("display {d}/events.npz --event -1 --out {d}/e.png", "--event must be in 0..2: {d}/events.npz holds 3 events", 2),
    ("display {d}/events.npz --event 3 --out {d}/e.png", "{d}/events.npz holds 3 events, got 3", 2),
    ("display {d}/missing.npz --out {d}/e.png", "npz file {d}/missing.npz not found", 2),
    ("display {d}/events.csv --out {d}/e.png", "unknown data format '.csv'; use .root or .npz", 2),
    ("display {d}/junk.npz --out {d}/e.png", "junk.npz cannot be read as an .npz file", 2),
    ("display {d}/truncated.root --out {d}/e.png", "{d}/truncated.root: reading tree 'tree' failed", 2),
    ("display {d}/empty.root --out {d}/e.png", "ROOT file {d}/empty.root is empty (0 bytes)", 2),
    ("display {d}/events.npz --out {d}/e.xyz", "--out must end in one of", 2),
    ("display {d}/events.npz --quantity energy", "argument --quantity: invalid choice: 'energy'", 2),
    # ---- evaluate
    ("evaluate " + CKPT + " --events 0", "xecbench evaluate: --events must be >= 1, got 0", 2),
    ("evaluate " + CKPT + " --events -3", "--events must be >= 1, got -3", 2),
    ("evaluate " + CKPT + " --mask-ratio 0", "--mask-ratio must be in (0, 1), got 0.0", 2),
    ("evaluate " + CKPT + " --mask-ratio 1.5", "--mask-ratio must be in (0, 1), got 1.5", 2),
    ("evaluate " + CKPT + " --mask-ratio nan", "--mask-ratio must be in (0, 1), got nan", 2),
    ("evaluate " + CKPT + " --weights ema", "--weights ema: {d}/inpaint.pt has no EMA weights", 2),
    ("evaluate " + CKPT + " --weights best", "argument --weights: invalid choice: 'best'", 2),
    ("evaluate {d}/regress.pt --mask-ratio 0.5", "holds a regressor, which hides nothing; remove it", 2),
    ("evaluate {d}/missing.pt", "checkpoint {d}/missing.pt not found", 2),
    ("evaluate {d}/events.csv", "events.csv cannot be read as a checkpoint", 2),
    ("evaluate " + CKPT + " --events 2 --data {d}/events.csv", "unknown data format '.csv'", 2),
    ("evaluate " + CKPT + " --data {d}/truncated.root", "{d}/truncated.root: reading tree 'tree' failed", 2),
    # ---- demo, sweep, the command itself
    ("demo --epochs 0 --out {d}/demo", "--epochs must be >= 1, got 0", 2),
    ("demo --events -1 --out {d}/demo", "--events must be >= 1, got -1", 2),
    ("sweep", "give NOTEBOOK -p NAME V1,V2 ... --out DIR, or --summarize DIR", 2),
    ("sweep {d}/nb.ipynb -p x 1 --out {d}/sw --timeout 0", "--timeout must be >= 1, got 0", 2),
    ("sweep {d}/nb.ipynb -p x 1 -p x 2 --out {d}/sw", "-p x is given twice", 2),
    ("sweep {d}/missing.ipynb -p x 1 --out {d}/sw", "missing.ipynb not found", 2),
    ("sweep --summarize {d}", "no finished sweep points (*/result.json) under {d}", 2),
    ("sweep -p x", "argument -p: expected 2 arguments", 2),
    ("", "the following arguments are required: command", 2),
    ("trian", "argument command: invalid choice: 'trian'", 2),
    ("info --verbose", "unrecognized arguments: --verbose", 2),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "ok.yaml").write_text("training:\n  progress: false\n")
    (d / "empty.yaml").write_text("")
    (d / "comments.yaml").write_text("# nothing yet\n\n# still nothing\n")
    (d / "syntax.yaml").write_text("training:\n  lr: 1e-3\n epochs: 2\n")
    (d / "bracket.yaml").write_text("training:\n  lr: 1e-3\n  epochs: [1\n")
    (d / "list.yaml").write_text("- training\n- model\n")
    (d / "scalar.yaml").write_text("mae_tiny\n")
    (d / "badsection.yaml").write_text("model: [tiny]\n")
    (d / "unknown.yaml").write_text("training:\n  lr_mn: 1\n")
    (d / "events.csv").write_text("npho,time\n1,2\n")
    (d / "junk.npz").write_bytes(b"not a zip file")
    (d / "empty.root").write_bytes(b"")
    (d / "nb.ipynb").write_text("{}")
    events = simulate(3, seed=1)
    save_npz(d / "events.npz", events)
    save_npz(d / "one.npz", simulate(1, seed=1))
    save_npz(d / "notruth.npz", {k: v for k, v in simulate(20, seed=1).items() if k in ("npho", "relative_time")})
    dead = simulate(4, seed=1)
    dead["npho"][:] = 1e10
    save_npz(d / "dead.npz", dead)
    root = write_root(d / "whole.root", simulate(300, seed=2))
    data = root.read_bytes()
    (d / "truncated.root").write_bytes(data[: len(data) // 2])
    torch.save({"weights": 1}, d / "notckpt.pt")
    # an inpainter checkpoint without EMA weights, and an MAE run to resume from
    cfg = load_config(None, ["model.task=inpaint", "model.freeze_encoder=false", "training.ema_decay=null"])
    model = build_model(cfg.model)
    state = {"model": model.state_dict(), "ema": None, "epoch": 1, "step": 1, "config": cfg.to_dict()}
    torch.save(state, d / "inpaint.pt")
    cfg = load_config(None, ["model.task=regress", "model.freeze_encoder=false"])
    state = {"model": build_model(cfg.model).state_dict(), "ema": None, "epoch": 1, "step": 1, "config": cfg.to_dict()}
    torch.save(state, d / "regress.pt")
    main(shlex.split(TRAIN.format(d=d) + f" --set training.run_dir={d}/run"))
    return d


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args,fragment,status", ROWS, ids=[f"{i:03d}" for i in range(len(ROWS))])
def test_bad_input_gives_one_clean_line(args, fragment, status, files, capsys, monkeypatch):
    monkeypatch.delenv("XECBENCH_DEBUG", raising=False)
    monkeypatch.chdir(files)
    argv = [a.format(d=files) for a in shlex.split(args)]
    code, _, err = _run(argv, capsys)
    assert code == status, err
    assert fragment.format(d=files) in err
    assert err.endswith("\n") and err.count("\n") == 1, err  # one line, no traceback
    assert err.startswith("xecbench")


def test_there_are_many_rows():
    assert len(ROWS) >= 40


def test_a_failed_resume_keeps_the_run_config(files, capsys):
    run = files / "run2"
    shutil.copytree(files / "run", run, dirs_exist_ok=True)
    before = (run / "config.yaml").read_text()
    argv = shlex.split(TRAIN.format(d=files)) + [
        "--set",
        f"training.run_dir={run}",
        "--set",
        "training.lr=1e6",
        "--resume",
        str(run / "checkpoint.pt"),
    ]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "training.lr" in err
    assert (run / "config.yaml").read_text() == before


def test_resume_may_change_what_it_honours(files, capsys):
    run = files / "run3"
    shutil.copytree(files / "run", run, dirs_exist_ok=True)
    argv = shlex.split(TRAIN.format(d=files)) + [
        "--set",
        f"training.run_dir={run}",
        "--set",
        "training.epochs=2",
        "--set",
        "training.log_every=3",
        "--resume",
        str(files / "run" / "checkpoint.pt"),
    ]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "finished 2 epochs" in out
    assert "epochs: 2" in (run / "config.yaml").read_text()
    # fewer epochs than the checkpoint has finished
    argv[argv.index("training.epochs=2")] = "training.epochs=1"
    argv[-1] = str(run / "checkpoint.pt")
    code, _, err = _run(argv, capsys)
    assert code == 2 and "has already finished 2 epochs; give training.epochs >= 2" in err


def test_run_time_failures_exit_1_in_one_line(files, capsys, monkeypatch):
    def fail(cfg, resume=None):
        raise NonFiniteLossError("training loss became NaN/inf at optimiser step 3 (epoch 1); last good checkpoint: x")

    monkeypatch.setattr("xecbench.train.run_training", fail)
    monkeypatch.delenv("XECBENCH_DEBUG", raising=False)
    code, _, err = _run(["train", str(files / "ok.yaml")], capsys)
    assert code == 1
    assert err.count("\n") == 1 and "training loss became NaN/inf at optimiser step 3" in err

    def crash(cfg, resume=None):
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr("xecbench.train.run_training", crash)
    code, _, err = _run(["train", str(files / "ok.yaml")], capsys)
    assert code == 1
    assert (
        err == "xecbench train: RuntimeError: something unexpected (xecbench --debug train ... shows the traceback)\n"
    )


def test_debug_shows_the_traceback(files, monkeypatch):
    from xecbench.train import ConfigError

    monkeypatch.delenv("XECBENCH_DEBUG", raising=False)
    with pytest.raises(ConfigError, match="training.lr must be in"):
        main(["--debug", "train", str(files / "ok.yaml"), "--set", "training.lr=-1"])
    with pytest.raises(ConfigError, match="training.lr must be in"):
        main(["train", str(files / "ok.yaml"), "--set", "training.lr=-1", "--debug"])
    monkeypatch.setenv("XECBENCH_DEBUG", "1")
    with pytest.raises(ConfigError, match="training.lr must be in"):
        main(["train", str(files / "ok.yaml"), "--set", "training.lr=-1"])


def test_ctrl_c_says_how_to_resume(files, capsys, monkeypatch):
    monkeypatch.delenv("XECBENCH_DEBUG", raising=False)
    run = files / "interrupted"

    def interrupted(cfg, resume=None):
        raise KeyboardInterrupt

    monkeypatch.setattr("xecbench.train.run_training", interrupted)
    argv = ["train", str(files / "ok.yaml"), "--set", f"training.run_dir={run}"]
    code, _, err = _run(argv, capsys)
    assert code == 130
    assert err == (
        f"xecbench train: interrupted before the first checkpoint; start again with: xecbench train "
        f"{files / 'ok.yaml'} --set training.run_dir={run}\n"
    )

    def after_one_epoch(cfg, resume=None):
        run.mkdir(exist_ok=True)
        (run / "checkpoint.pt").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr("xecbench.train.run_training", after_one_epoch)
    code, _, err = _run(argv, capsys)
    assert code == 130
    assert err == (
        f"xecbench train: interrupted; resume with: xecbench train {files / 'ok.yaml'} "
        f"--set training.run_dir={run} --resume {run / 'checkpoint.pt'}\n"
    )


def test_evaluate_uses_the_checkpoints_data_settings_and_says_which_weights(tmp_path, capsys, monkeypatch):
    import xecbench.data
    import xecbench.eval

    cfg = load_config(
        None,
        [
            "model.task=inpaint",
            "model.freeze_encoder=false",
            "data.npho_scheme=sqrt",
            "data.npho_scale=7.0",
            "data.spectrum=flat",
            "data.random_dead_fraction=0.1",
        ],
    )
    model = build_model(cfg.model)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    state = {"model": model.state_dict(), "ema": ema, "epoch": 2, "step": 5, "config": cfg.to_dict()}
    torch.save(state, tmp_path / "c.pt")
    seen = {}
    real_compare = xecbench.eval.compare_inpainting
    real_sim = xecbench.data.simulate

    def compare(model, data, **kwargs):
        seen["normalizer"] = data.normalizer
        seen["weight"] = next(iter(model.state_dict().values())).clone()
        return real_compare(model, data, **kwargs)

    def simulate(n, seed=0, config=None, **kwargs):
        seen["sim"] = config
        return real_sim(n, seed=seed, config=config, **kwargs)

    monkeypatch.setattr(xecbench.eval, "compare_inpainting", compare)
    monkeypatch.setattr(xecbench.data, "simulate", simulate)
    main(["evaluate", str(tmp_path / "c.pt"), "--events", "4", "--out", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"using the EMA (decay 0.999) weights of {tmp_path / 'c.pt'} (epoch 2, step 5)"
    assert seen["normalizer"].npho_scheme == "sqrt" and seen["normalizer"].npho_scale == 7.0
    assert seen["sim"].spectrum == "flat" and seen["sim"].random_dead_fraction == 0.1
    assert torch.equal(seen["weight"], next(iter(ema.values())))
    main(["evaluate", str(tmp_path / "c.pt"), "--events", "4", "--weights", "live"])
    assert capsys.readouterr().out.startswith("using the live weights")
    assert torch.equal(seen["weight"], next(iter(model.state_dict().values())))
