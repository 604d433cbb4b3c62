"""Experiment configuration: YAML with sections ``model``, ``data`` and ``training``, loaded into typed
dataclasses, with command-line overrides such as ``training.lr=1e-3``.

Every key is checked: an unknown key, a wrong type, a NaN or infinite number or a value out of range
stops with an error that names the key, what is allowed and the closest valid key; :func:`validate`
checks the keys that depend on each other.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key or value that the workbench does not accept."""


def _choices(*values: Any, default: Any) -> Any:
    return field(default=default, metadata={"choices": values})


def _range(
    default: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False
) -> Any:
    return field(default=default, metadata={"range": (lo, hi, lo_open, hi_open)})


@dataclass
class ModelConfig:
    task: str = _choices("mae", "inpaint", "regress", default="mae")
    preset: str = _choices("tiny", "base", default="tiny")
    posenc: str = _choices("learnable", "sinusoidal", "geometric", "none", "rope", "alibi", default="learnable")
    hex_op: str = _choices("conv", "attention", default="conv")
    token_dim: int | None = _range(None, 1)  # override the preset's token width
    # MAE: fraction of valid sensors masked
    mask_ratio: float = _range(0.6, 0.0, 1.0, lo_open=True, hi_open=True)
    loss: str = _choices("mse", "l1", "huber", default="mse")
    channel_weights: tuple[float, float] = (1.0, 1.0)  # npho, time; each >= 0, one may be 0
    mask_unit: str = _choices("sensor", "cell", default="sensor")  # MAE: hide single sensors or last-stage cells
    # inpainting only: the fraction of valid sensors hidden per event
    inpaint_mask_ratio: float = _range(0.05, 0.0, 1.0, lo_open=True, hi_open=True)
    # in training, the fraction hidden on the PMT faces (outer, us, ds, top, bottom), which a uniform
    # 5 % leaves with a few hidden sensors per event; default: inpaint_mask_ratio
    inpaint_pmt_mask_ratio: float | None = _range(None, 0.0, 1.0, lo_open=True, hi_open=True)
    freeze_encoder: bool = True
    head_width: int = _range(32, 1)  # full-resolution refiner heads (MAE decoder and inpainter)
    init_from: str | None = None  # an MAE checkpoint whose encoder the inpainter or regressor starts from
    # regression only: targets by name (energy, uvw, direction, time), the loss and per-target weights
    targets: tuple[str, ...] = ("energy", "uvw")
    regress_loss: str = _choices("smooth_l1", "l1", "mse", "gaussian_nll", default="smooth_l1")
    target_weights: tuple[float, ...] | None = None  # one per target; default all 1
    regress_hidden: int = _range(128, 1)  # hidden width of each target's MLP head


@dataclass
class DataConfig:
    source: str = "simulate"  # "simulate" or a .root / .npz file
    n_train: int = _range(2048, 1)
    n_val: int = _range(256, 1)
    val_source: str | None = None  # a validation file (all of it); default: the last n_val events of ``source``
    seed: int = _range(0, 0)
    spectrum: str = _choices("mono", "flat", default="mono")
    random_dead_fraction: float = _range(0.0, 0.0, 1.0, hi_open=True)
    fiducial: bool = False  # keep events whose first interaction is in |u| < 23.9, |v| < 67.9, w >= 0 cm
    npho_scheme: str = _choices("log1p", "sqrt", "anscombe", "linear", default="log1p")
    npho_scale: float = _range(100.0, 0.0, lo_open=True)
    npho_scale2: float = _range(2.5, 0.0, lo_open=True)
    time_scale: float = _range(10.0, 0.0, lo_open=True)
    time_shift: float = 0.5
    num_workers: int = _range(0, 0)


@dataclass
class TrainingConfig:
    batch_size: int = _range(32, 1)
    grad_accum_steps: int = _range(1, 1)
    epochs: int = _range(2, 1)
    lr: float = _range(1e-3, 0.0, lo_open=True)
    optimizer: str = _choices("adamw", "schedulefree_adamw", "dadapt_adam", default="adamw")
    weight_decay: float = _range(0.05, 0.0)
    # layer-wise learning-rate decay when fine-tuning an encoder: level k of L gets lr * layer_decay ** (L - k)
    layer_decay: float | None = _range(None, 0.0, 1.0, lo_open=True)
    scheduler: str = _choices("cosine", "onecycle", "plateau", "none", default="cosine")
    warmup_epochs: float = _range(0.0, 0.0)
    lr_min: float = _range(0.0, 0.0)
    max_lr: float | None = _range(None, 0.0, lo_open=True)  # onecycle peak; default lr
    pct_start: float = _range(0.3, 0.0, 1.0)  # onecycle: in (0, 1)
    lr_patience: int = _range(2, 0)
    lr_factor: float = _range(0.5, 0.0, 1.0, lo_open=True, hi_open=True)
    ema_decay: float | None = _range(0.999, 0.0, 1.0, hi_open=True)  # None: no EMA
    ema_warmup: bool = True  # EMA decay min(ema_decay, (1 + step) / (10 + step)) per optimiser step
    amp: str = _choices("auto", "bf16", "fp16", "off", default="auto")  # auto: bf16/fp16 on CUDA, off on CPU
    grad_clip: float | None = _range(1.0, 0.0, lo_open=True)
    # torch.compile the training forward pass (the first steps compile: tens of seconds on a CPU)
    compile: bool = False
    seed: int = _range(0, 0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = _range(10, 1)  # optimiser steps between logged metrics (the only host syncs)
    run_dir: str = "runs/train"
    checkpoint_every: int = _range(1, 1)  # epochs
    progress: bool = True
    # experiment tracking besides metrics.json/csv: TensorBoard (<run_dir>/tensorboard) or MLflow
    log_to: str = _choices("none", "tensorboard", "mlflow", default="none")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list like {[_type_name(a) for a in args]}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{key} must be of type {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _check_meta(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    if "choices" in meta and value not in meta["choices"]:
        close = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"]], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key} must be one of {list(meta['choices'])}, got {value!r}{hint}")
    if "range" in meta and value is not None:
        lo, hi, lo_open, hi_open = meta["range"]
        if (lo is not None and (value < lo or (lo_open and value == lo))) or (
            hi is not None and (value > hi or (hi_open and value == hi))
        ):
            raise ConfigError(f"{key} must be in {_interval(lo, hi, lo_open, hi_open)}, got {value!r}")


def _interval(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return f"{left}{lo}, {hi if hi is not None else 'inf'}{right}"


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"section {prefix.rstrip('.') or 'top level'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key '{prefix}{key}'; allowed keys are {sorted(fields)}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{prefix}{key}.")
            continue
        v = _coerce(f"{prefix}{key}", value, tp)
        _check_meta(f"{prefix}{key}", v, fields[key].metadata)
        kwargs[key] = v
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], strict: bool = True) -> Config:
    """A checked :class:`Config` from plain data. ``strict=False`` for a stored config (a checkpoint's):
    it skips the checks that only matter when a run starts (data files exist, where the encoder comes from)."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping with sections model, data, training; got {_short(data)}")
    cfg = _build(Config, data or {}, "")
    validate(cfg, strict)
    return cfg


DATA_SUFFIXES = (".root", ".npz")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def validate(cfg: Config, strict: bool = True) -> None:
    """The checks across keys (each key alone was checked when it was read); see :func:`config_from_dict`."""
    m, d, t = cfg.model, cfg.data, cfg.training
    if any(w < 0 for w in m.channel_weights) or not any(m.channel_weights):
        raise ConfigError(
            f"model.channel_weights (npho, time) must both be >= 0 and not both 0, got {list(m.channel_weights)}"
        )
    if m.token_dim is not None:
        from ..nn.encoder import PRESETS

        heads = PRESETS[m.preset].fusion_heads
        if m.token_dim % heads:
            raise ConfigError(
                f"model.token_dim must be a multiple of {heads} (the fusion heads of preset {m.preset!r}), "
                f"got {m.token_dim}"
            )
    if m.init_from is not None and m.task == "mae":
        raise ConfigError("model.init_from is only used with model.task=inpaint or regress, got task 'mae'; remove it")
    if strict and m.task != "mae" and m.freeze_encoder and not m.init_from:
        raise ConfigError(
            f"model.task={m.task} with model.freeze_encoder=true needs model.init_from (an MAE checkpoint): "
            "otherwise the heads train on a random frozen encoder; set e.g. "
            "model.init_from=runs/mae_tiny/checkpoint.pt, or model.freeze_encoder=false"
        )
    if m.task == "regress":
        from ..nn.regress import TARGETS

        if not m.targets or len(set(m.targets)) != len(m.targets) or not set(m.targets) <= set(TARGETS):
            raise ConfigError(f"model.targets must be distinct names from {list(TARGETS)}, got {list(m.targets)}")
        if m.target_weights is not None and (
            len(m.target_weights) != len(m.targets) or any(w < 0 for w in m.target_weights)
        ):
            raise ConfigError(
                f"model.target_weights must give one weight >= 0 per target {list(m.targets)}, "
                f"got {list(m.target_weights)}"
            )
    _check_source("data.source", d.source, strict, simulate_ok=True)
    if d.val_source is not None:
        if d.source == "simulate":
            raise ConfigError(
                "data.val_source is only used with a file as data.source; with data.source=simulate the "
                "validation set is simulated; remove data.val_source"
            )
        _check_source("data.val_source", d.val_source, strict, simulate_ok=False)
    if t.scheduler == "onecycle" and not 0.0 < t.pct_start < 1.0:
        raise ConfigError(f"training.pct_start must be in (0.0, 1.0) with scheduler onecycle, got {t.pct_start}")
    if t.scheduler == "cosine" and t.lr_min > t.lr:
        raise ConfigError(f"training.lr_min ({t.lr_min}) must not exceed training.lr ({t.lr}) with scheduler cosine")
    if t.optimizer == "schedulefree_adamw" and t.scheduler != "none":
        raise ConfigError(
            f"training.scheduler must be 'none' with training.optimizer=schedulefree_adamw (it schedules "
            f"itself; use warmup_epochs), got {t.scheduler!r}"
        )
    if not _DEVICE.fullmatch(t.device):
        raise ConfigError(f"training.device must be auto, cpu, mps, cuda or cuda:N, got {t.device!r}")
    if not t.run_dir.strip():
        raise ConfigError("training.run_dir must not be empty")
    if Path(t.run_dir).exists() and not Path(t.run_dir).is_dir():
        raise ConfigError(f"training.run_dir={t.run_dir} is a file, not a folder")
    if strict and m.task != "mae" and m.init_from and not Path(m.init_from).is_file():
        raise ConfigError(
            f"model.init_from={m.init_from} not found: train the MAE first (e.g. xecbench train configs/mae_tiny.yaml)"
        )


def _check_source(key: str, value: str, strict: bool, simulate_ok: bool) -> None:
    if simulate_ok and value == "simulate":
        return
    allowed = ("'simulate' or " if simulate_ok else "") + "a path ending in .root or .npz"
    if Path(value).suffix not in DATA_SUFFIXES:
        close = difflib.get_close_matches(value, ["simulate"], n=1) if simulate_ok else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key} must be {allowed}, got {value!r}{hint}")
    if strict and not Path(value).is_file():
        raise ConfigError(f"{key}: data file {value} not found")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.lr=1e-3"`` -> (["training", "lr"], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem})") from None
    return keys, value


# the configs that ship inside the package (also reachable as configs/ in a clone)
PACKAGED_CONFIGS = Path(str(resources.files("xecbench") / "configs"))


def packaged_configs() -> list[str]:
    """Names of the packaged configs (``mae_tiny``, ...): ``load_config(name)`` reads them from any folder."""
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def config_path(path: str | Path) -> Path:
    """A config file: ``path`` itself when it exists, else a packaged config named ``path``
    (``mae_tiny`` or ``mae_tiny.yaml``)."""
    p = Path(path)
    if p.exists() or len(p.parts) != 1:
        return p
    packaged = PACKAGED_CONFIGS / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    if packaged.is_file():
        return packaged
    raise FileNotFoundError(f"config file {p} not found, and no packaged config has that name: {packaged_configs()}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file (or a packaged config's name) as a dict; errors name the file (and the line,
    for a syntax error)."""
    p = config_path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {p} not found")
    if not p.is_file():
        raise ConfigError(f"config file {p} is not a file")
    text = p.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark, context = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if context is not None and getattr(exc, "context", None):
            problem += f" ({exc.context} at line {context.line + 1})"
        raise ConfigError(f"config file {p}: invalid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"config file {p} is empty; give at least one section (model, data, training)")
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {p} must be a mapping with sections model, data, training; it holds a "
            f"{type(data).__name__}: {_short(data)}"
        )
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``overrides``."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            if node.get(k) is None:
                node[k] = {}
            node = node[k]
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{k}' is not a section")
        node[keys[-1]] = value
    return config_from_dict(data)


def save_config(cfg: Config, path: str | Path) -> None:
    from ..data.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    return obj
