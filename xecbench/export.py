"""Export a trained inpainter or regressor for software that does not run Python.

The exported graph is the raw-units module of :mod:`.nn.deploy`, so the exported model and
``xecbench inpaint`` compute the same thing:

* inpainter (or MAE): inputs ``sensors (B, 4760, 2)`` float32 raw (npho, time; invalid > 9e9 or NaN)
  and ``fill (B, 4760)`` float32 (1 = replace); output ``filled (B, 4760, 2)``;
* regressor: input ``sensors (B, 4760, 2)``; output ``targets (B, D)``, columns named in the metadata.

The batch size is free in both formats. Each file carries a JSON description (inputs, outputs, the
checkpoint's identity): TorchScript as the extra file ``xecbench.json``, ONNX as metadata property
``xecbench``. ONNX export needs the ``onnx`` and ``onnxscript`` packages (``pip install onnx onnxscript``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .data.io import atomic_path
from .geometry import N_CHANNELS
from .nn.deploy import RawInpainter, RawRegressor

FORMATS = ("torchscript", "onnx")


def deployable(checkpoint: str | os.PathLike[str], weights: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The raw-units module of a checkpoint and the description written beside it."""
    from .inpaint_files import checkpoint_identity, load_inpainter
    from .train import config_from_checkpoint, load_checkpoint, load_trained

    state = load_checkpoint(checkpoint)
    if config_from_checkpoint(state).model.task != "regress":
        module, info = load_inpainter(checkpoint, weights, state=state)
        info.update(
            inputs={"sensors": ["B", N_CHANNELS, 2], "fill": ["B", N_CHANNELS]},
            outputs={"filled": ["B", N_CHANNELS, 2]},
        )
        return module, info
    model, _, which = load_trained(str(checkpoint), weights, state)
    module = RawRegressor(model).eval()
    info = {
        **checkpoint_identity(checkpoint, state, which),
        "inputs": {"sensors": ["B", N_CHANNELS, 2]},
        "outputs": {"targets": module.outputs},
    }
    return module, info


def example_inputs(module: torch.nn.Module, batch: int = 4) -> tuple[torch.Tensor, ...]:
    """Raw inputs to trace with: simulated events, some sensors to fill (and their invalid markers)."""
    from .data import simulate

    ev = simulate(batch, seed=0)
    sensors = torch.stack([torch.from_numpy(ev["npho"]), torch.from_numpy(ev["relative_time"])], dim=-1)
    if isinstance(module, RawRegressor):
        return (sensors,)
    fill = torch.zeros(batch, N_CHANNELS)
    fill[:, 7::97] = 1.0
    return sensors, fill


def export_model(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: str = "torchscript",
    weights: str | None = None,
) -> tuple[Path, dict]:
    """Write the exported model to ``out`` (atomically); returns the path and its description."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    module, info = deployable(checkpoint, weights)
    if isinstance(module, RawInpainter):
        module.sparse = False  # a graph with fixed shapes (the sparse heads' cell count depends on the data)
    inputs = example_inputs(module)
    names = list(info["inputs"])
    info["format"] = fmt
    out = Path(out)
    with atomic_path(out) as tmp, torch.no_grad():
        # one eager call first: it builds the cached geometry tables (neighbour lists, sensor positions)
        # as real tensors, which tracing would otherwise create, and cache, as its own placeholders
        module(*inputs)
        if fmt == "torchscript":
            traced = torch.jit.trace(module, inputs, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"xecbench.json": json.dumps(info)})
        else:
            _export_onnx(module, inputs, names, list(info["outputs"]), tmp, info)
    return out, info


def _export_onnx(module, inputs, names, outputs, path: Path, info: dict) -> None:
    try:
        import onnx
    except ImportError as exc:
        raise RuntimeError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript") from exc
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        module,
        inputs,
        dynamo=True,
        input_names=names,
        output_names=outputs,
        dynamic_shapes=tuple({0: batch} for _ in inputs),
        verbose=False,
    )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {"xecbench": json.dumps(info)})
    onnx.save(proto, str(path))


def load_exported(path: str | os.PathLike[str]):
    """A callable ``f(*tensors) -> tensor`` of an exported file (TorchScript, or ONNX via onnxruntime)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} not found")
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run(*tensors: torch.Tensor) -> torch.Tensor:
            feeds = {n: t.detach().cpu().numpy() for n, t in zip(names, tensors)}
            return torch.from_numpy(session.run(None, feeds)[0])

        return run
    return torch.jit.load(str(path))
