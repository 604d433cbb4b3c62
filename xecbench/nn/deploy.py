"""Trained models with raw detector values in and out: what ``xecbench inpaint`` runs and what
``xecbench export`` writes, so that software without Python gets the same numbers.

* :class:`RawInpainter` takes ``sensors (B, 4760, 2)``, the raw (npho, time) as the ROOT files hold them
  (invalid > 9e9 or NaN), and ``fill (B, 4760)`` (1 = replace this sensor), and returns ``(B, 4760, 2)``:
  the model's prediction where ``fill`` is set, the input everywhere else. The encoder sees the valid
  sensors that are not to be filled.
* :class:`RawRegressor` takes ``sensors (B, 4760, 2)`` and returns ``(B, D)``: the targets in physical
  units, concatenated in the order of :attr:`RawRegressor.outputs`.

The normalisation is part of the module (traced into an exported graph as constants).
"""

from __future__ import annotations

import threading
import warnings

import torch
from torch import nn

from ..data.normalize import Normalizer
from ..geometry import N_CHANNELS
from .masking import SensorMask
from .regress import TARGETS, XECRegressor


def _check_sensors(sensors: torch.Tensor) -> None:
    if torch.jit.is_tracing():
        return
    if sensors.dim() != 3 or tuple(sensors.shape[1:]) != (N_CHANNELS, 2):
        raise ValueError(f"sensors must have shape (B, {N_CHANNELS}, 2) (raw npho, time), got {tuple(sensors.shape)}")


class RawInpainter(nn.Module):
    """An inpainter (or an MAE) that fills sensors in raw units. ``fill_time=False`` keeps the input
    time everywhere (for a model trained without a time loss).

    ``sparse=True`` runs the full-resolution heads only around the sensors to fill (the same values,
    many times faster when few are filled); an exported graph uses ``sparse=False``, whose shapes do
    not depend on the data.

    ``trace=True``: in CPU inference (no autograd, eval mode, float32) the model's dense part, all
    but the refiner (:meth:`refiner_inputs`), runs as a TorchScript trace made at the first call.
    The trace calls the same operators on the same tensors, so the values are bit for bit those of
    the eager model, but without Python between the operators: the tiny inpainter's encoder runs
    about 1.2x faster on one thread, more when several threads share the interpreter
    (``benchmarks/bench_inpaint_files.py``). The refiner's sparse path has data-dependent shapes and
    stays eager. The trace shares the model's parameters: weights loaded in place reach it."""

    def __init__(
        self, model: nn.Module, normalizer: Normalizer, fill_time: bool = True, sparse: bool = True, trace: bool = True
    ):
        super().__init__()
        if not hasattr(model, "predict") or not hasattr(model, "refiner_inputs"):
            name = type(model).__name__
            raise TypeError(f"RawInpainter needs an inpainter or an MAE (predict, refiner_inputs), got {name}")
        self.model, self.normalizer, self.fill_time, self.sparse = model, normalizer, fill_time, sparse
        self.trace = trace
        # (parameter dtype, device) -> trace; a plain dict, so the trace is no submodule (not in state_dict)
        self._traces: dict[tuple, torch.jit.ScriptModule] = {}

    def forward(self, sensors: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """sensors ``(B, 4760, 2)`` raw, fill ``(B, 4760)`` bool or 0/1 -> ``(B, 4760, 2)`` raw."""
        _check_sensors(sensors)
        fill = fill > 0.5 if fill.is_floating_point() else fill.bool()
        traced = torch.jit.is_tracing() or torch.compiler.is_compiling()
        eager_cpu = sensors.device.type == "cpu" and not (traced or sensors.requires_grad)
        if eager_cpu:
            x, valid, time_valid = self.normalizer.normalize(sensors[..., 0], sensors[..., 1])  # same bits, faster
        else:
            x, valid, time_valid = self.normalizer(sensors[..., 0], sensors[..., 1])
        masks = SensorMask(valid, time_valid, fill)
        at = fill if self.sparse else None
        if eager_cpu and self._traceable(x):
            tokens, extra = self.refiner_inputs(x, masks)
            pred = self.model.refiner(x, masks, tokens, extra, at)  # (B, 4760, 2) normalised
        else:
            pred = self.model.predict(x, masks, at)
        return self.raw_filled(sensors, fill, pred, at_fill_only=eager_cpu and self.sparse)

    def raw_filled(
        self, sensors: torch.Tensor, fill: torch.Tensor, pred: torch.Tensor, at_fill_only: bool = False
    ) -> torch.Tensor:
        """The output: ``sensors (B, 4760, 2)`` raw with the predictions ``pred (B, 4760, 2)`` (normalised)
        in raw units where ``fill (B, 4760)`` bool. ``at_fill_only``: convert the filled sensors only (the
        same values; data-dependent shapes, so eager only)."""
        if at_fill_only:
            b, n = fill.nonzero(as_tuple=True)
            npho, time = self.normalizer.inverse(pred[b, n].float())  # (Q,) each
            out = sensors.clone()
            out[b, n, 0] = npho.to(sensors.dtype)
            if self.fill_time:
                out[b, n, 1] = time.to(sensors.dtype)
            return out
        npho, time = self.normalizer.inverse(pred.float())
        npho = torch.where(fill, npho.to(sensors.dtype), sensors[..., 0])
        time = torch.where(fill, time.to(sensors.dtype), sensors[..., 1]) if self.fill_time else sensors[..., 1]
        return torch.stack([npho, time], dim=-1)  # a time not filled is the input's, in its own precision

    def _traceable(self, x: torch.Tensor) -> bool:
        p = next(self.model.parameters())
        return (
            self.trace
            and not torch.is_grad_enabled()
            and not self.model.training
            and x.dtype == p.dtype == torch.float32
            and p.device.type == "cpu"
        )

    def refiner_inputs(self, x: torch.Tensor, masks: SensorMask) -> tuple[torch.Tensor, dict | None]:
        """The model's ``refiner_inputs(x, masks)`` through its trace (made now if this is the first
        call): tokens ``(B, 6, D)`` and the extra features per face (None for an inpainter)."""
        p = next(self.model.parameters())
        key = (p.dtype, p.device)
        if key not in self._traces:
            with _TRACING:  # one trace, also when several threads arrive at once
                if key not in self._traces:
                    self._traces[key] = _trace_refiner_inputs(self.model, x, masks)
        out = self._traces[key](x, masks.valid, masks.time_valid, masks.hidden)
        return out if isinstance(out, tuple) else (out, None)


_TRACING = threading.Lock()


class _FlatRefinerInputs(nn.Module):
    """``model.refiner_inputs`` on plain tensors (a trace takes no dataclasses): x ``(B, 4760, 2)``,
    valid, time_valid, hidden ``(B, 4760)`` -> tokens, or tokens and the extra features (a trace
    cannot return None)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, valid, time_valid, hidden):
        tokens, extra = self.model.refiner_inputs(x, SensorMask(valid, time_valid, hidden))
        return tokens if extra is None else (tokens, extra)


def _trace_refiner_inputs(model: nn.Module, x: torch.Tensor, masks: SensorMask) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # the tracer warns where Python reads a tensor's shape (kernel crops, padding, shape checks):
        # those depend on the faces' fixed sizes only, never on the values or the batch size
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(
            _FlatRefinerInputs(model).eval(),
            (x, masks.valid, masks.time_valid, masks.hidden),
            check_trace=False,
            strict=False,
        )


class RawRegressor(nn.Module):
    """A regressor on raw sensors: ``(B, 4760, 2) -> (B, D)`` physical units, nothing hidden."""

    def __init__(self, model: XECRegressor):
        super().__init__()
        self.model = model
        # one name per output column, e.g. energy, uvw.u, uvw.v, uvw.w
        self.outputs: list[str] = []
        for t in model.targets:
            dims = TARGETS[t][0]
            self.outputs += [t] if dims == 1 else [f"{t}.{c}" for c in ("uvw" if t == "uvw" else "xyz")[:dims]]

    def forward(self, sensors: torch.Tensor) -> torch.Tensor:
        _check_sensors(sensors)
        x, valid, time_valid = self.model.normalizer(sensors[..., 0], sensors[..., 1])
        out = self.model(x, SensorMask(valid, time_valid, torch.zeros_like(valid)))
        return torch.cat([out.pred[t].float() for t in self.model.targets], dim=1)
