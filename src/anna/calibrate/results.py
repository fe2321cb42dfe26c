"""Reading a calibration back: statistics, weight absmax, run record, cached inputs; re-running a component."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anna.adapters.base import Model
from anna.artifacts import read_json, read_tensors
from anna.calibrate import layout
from anna.calibrate.tree import to_device, unflatten
from anna.errors import AnnaError
from anna.stats import ActStats


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """`run.json` as written by `calibrate`."""
    return read_json(layout.run_json(run_dir), "run record (run.json; run `anna calibrate` first)")


def load_run_model(run_dir: str | Path, stage: str, model: Model | None = None) -> tuple[dict[str, Any], Model, str]:
    """run.json, the run's model (loaded from its spec unless given; it must be the same model) and component."""
    from anna.adapters import load_model

    run = load_run(run_dir)
    spec = run.get("model")
    if not spec:
        raise AnnaError(f"{run_dir}/run.json names no model")
    if model is None:
        try:
            model = load_model(spec)
        except AnnaError as e:
            if not str(e).startswith("unknown model"):
                raise
            raise AnnaError(
                f"run {run_dir} was made from Python with model '{spec}', which is no built-in model, hub id or "
                f"folder, so '{stage}' cannot rebuild it: continue from Python with the model object, e.g. "
                f"anna.quantize(module, data, run_dir='{run_dir}', ...), or quantize with name= set to the model's "
                "hub id or local folder"
            ) from None
    elif model.name != spec:
        raise AnnaError(f"run {run_dir} was calibrated on '{spec}', not '{model.name}'")
    model.require_weights(stage)
    return run, model, run.get("component") or model.default_component


def load_stats(run_dir: str | Path) -> dict[str, dict[str, ActStats]]:
    """unit -> activation name -> ActStats. Activations that saw no finite value are left out."""
    data = read_json(layout.stats_json(run_dir), "calibration statistics")
    out: dict[str, dict[str, ActStats]] = {}
    for unit, entry in data["units"].items():
        out[unit] = {
            act: ActStats.from_json(value) for act, value in entry.items() if act != "kind" and isinstance(value, dict)
        }
    return out


def load_cached_inputs(run_dir: str | Path) -> list[Any]:
    """The cached samples, in order: `(args, kwargs)` for pipeline components, the batch for generic models."""
    meta = read_json(layout.inputs_json(run_dir), "cached inputs")
    tensors = read_tensors(layout.inputs_tensors(run_dir), "cached input tensors") if meta["samples"] else {}
    out = []
    for sample in meta["samples"]:
        value = unflatten(sample["value"], tensors)
        if meta["kind"] == "pipeline":
            args, kwargs = value
            value = (tuple(args), dict(kwargs))
        out.append(value)
    return out


def _device_of(module: torch.nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    return torch.device("cpu")


def run_component(model: Model, component: str, sample: Any, grad: bool = False) -> Tensor:
    """The component's consumed output for one cached sample, exactly as the pipeline (or forward) computed it.
    With `grad`, autograd records the run (for gradient probes); otherwise it runs in inference mode."""
    module = model.component(component)
    sample = to_device(sample, _device_of(module))
    with torch.inference_mode(not grad):
        if model.pipeline is None:
            if model.forward is None:
                raise AnnaError(f"model {model.name} has neither a pipeline nor a forward function")
            return model.forward(module, sample)
        if not (isinstance(sample, tuple) and len(sample) == 2 and isinstance(sample[1], dict)):
            raise AnnaError("a pipeline component's cached sample must be an (args, kwargs) pair")
        args, kwargs = sample
        return model.component_output(component, module(*args, **kwargs))
