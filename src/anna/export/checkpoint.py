"""Quantized checkpoints: ``CKPT/model.safetensors`` plus ``CKPT/plan.json``, rebuilt on a base model on load.

Layout of ``model.safetensors`` (keys are the component's tensor names):

- a quantized unit ``U`` stores its option's state under ``U.``: weight codes (``float8_e4m3fn`` for FP8, ``uint8``
  for qdq), ``<weight>_scale`` (fp32, one per output channel), ``<weight>_zero_point`` (uint8, qdq only), activation
  parameters (``input_scale`` for a Linear/Conv2d, ``act_quant.<name>_scale`` for the seven activations of an
  attention unit; fp32 scalars, plus uint16 ``*_zero_point`` for qdq), and its biases and norms in FP16. An attention
  unit under an ``-fp16math`` option stores each FP8 projection ``P`` as a Linear unit does (``P.weight``,
  ``P.weight_scale``, ``P.input_scale``, ``P.bias``) and its other tensors, the FP16 projections included, in FP16;
- every other tensor of the component (FP16 units, norms, embeddings, buffers) in FP16; integer buffers as they are.

The tensor bytes (the file size minus the safetensors header) therefore equal the plan's predicted ``bytes``
(``inventory.unit_bytes``) exactly. ``plan.json`` is the plan plus ``model_spec`` and ``component``. Loading never
unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anna.adapters.base import Model
from anna.artifacts import FORMAT_VERSION, read_json, read_tensors, write_json, write_tensors
from anna.errors import AnnaError
from anna.inventory import build_inventory, unit_modules
from anna.options.apply import apply
from anna.options.registry import FP16, quant_option
from anna.options.wrappers import unit_option, unit_state
from anna.plan import Plan, load_plan, plan_from_json

TENSORS_FILE = "model.safetensors"
PLAN_FILE = "plan.json"
FORMAT = "anna-checkpoint"

Echo = Callable[[str], Any] | None


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a checkpoint is and what it weighs: tensor bytes (file minus header) against the plan's bytes."""

    path: Path
    file_bytes: int
    header_bytes: int
    tensor_bytes: int
    plan_bytes: int
    fp16_bytes: int
    rounded_tensors: int = 0

    @property
    def size_ratio(self) -> float:
        """Tensor bytes over the component's FP16 bytes."""
        return self.tensor_bytes / self.fp16_bytes

    def describe(self) -> str:
        diff = self.tensor_bytes - self.plan_bytes
        return (f"checkpoint {self.path}: {self.tensor_bytes:,} tensor bytes (plan predicts {self.plan_bytes:,}, "
                f"difference {diff:+,}) + {self.header_bytes:,} header bytes = {self.file_bytes:,}; size ratio "
                f"{self.size_ratio:.4f} of {self.fp16_bytes:,} FP16 bytes")


def safetensors_header_bytes(path: str | Path) -> int:
    """Bytes of a safetensors file before its tensor data: the 8-byte length plus the JSON header."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise AnnaError(f"{path} is too short to be a safetensors file")
    return 8 + struct.unpack("<Q", head)[0]


def _floating_to_fp16(t: Tensor) -> tuple[Tensor, bool]:
    """``t`` as stored outside quantized units (floating: FP16; else as is), and whether storing it lost bits."""
    if not t.is_floating_point():
        return t.detach().clone(), False
    h = t.detach().to(torch.float16)
    return h, not torch.equal(h.to(t.dtype), t.detach())


def checkpoint_tensors(component: nn.Module, plan: Plan) -> tuple[dict[str, Tensor], int]:
    """Every tensor the checkpoint of an applied component holds, and how many non-unit tensors FP16 rounded."""
    tensors: dict[str, Tensor] = {}
    quantized = {n: o for n, o in plan.units.items() if o != FP16}
    for name, opt in quantized.items():
        try:
            module = component.get_submodule(name)
        except AttributeError:
            raise AnnaError(f"unit '{name}' of the plan is not in the component") from None
        if unit_option(module) != opt:
            raise AnnaError(f"unit '{name}' is {unit_option(module) or 'not quantized'}, but the plan says {opt}: "
                            "apply the plan before saving")
        tensors |= {f"{name}.{k}": t for k, t in unit_state(module).items()}
    inside = tuple(f"{n}." for n in quantized)
    rounded = 0
    for name, t in list(component.named_parameters()) + list(component.named_buffers()):
        if name.startswith(inside):
            continue
        tensors[name], lost = _floating_to_fp16(t)
        rounded += lost
    return tensors, rounded


def round_to_checkpoint_(component: nn.Module, plan: Plan) -> int:
    """Round, in place, every tensor that the checkpoint stores in FP16 (outside the quantized units) to its FP16
    value, keeping its dtype; returns how many tensors changed.

    Afterwards the in-memory model is exactly what loading its checkpoint gives. ``apply`` does not do this by itself:
    it leaves the units that a plan keeps in fp16 untouched. For a base model that is already FP16-exact (SDXL's
    published FP16 weights) it changes nothing.
    """
    inside = tuple(f"{n}." for n, o in plan.units.items() if o != FP16)
    changed = 0
    with torch.no_grad():
        for name, t in list(component.named_parameters()) + list(component.named_buffers()):
            if name.startswith(inside) or not t.is_floating_point():
                continue
            h = t.to(torch.float16).to(t.dtype)
            if not torch.equal(h, t):
                t.copy_(h)
                changed += 1
    return changed


def save_checkpoint(
    model: Model,
    component: str | None,
    plan: Plan,
    out_dir: str | Path,
    *,
    model_spec: str | None = None,
    echo: Echo = print,
) -> CheckpointInfo:
    """Write ``out_dir/model.safetensors`` and ``out_dir/plan.json`` for a component that ``plan`` was applied to.

    ``model_spec`` is what ``load_model`` rebuilds the base model from (default: the model's name).
    """
    component = component or plan.component or model.default_component
    if plan.model != model.name or plan.component != component:
        raise AnnaError(f"plan is for {plan.model}/{plan.component}, not {model.name}/{component}")
    comp = model.component(component)
    tensors, rounded = checkpoint_tensors(comp, plan)
    out = Path(out_dir)
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "model": model.name, "component": component}
    path = write_tensors(out / TENSORS_FILE, tensors, metadata=meta)
    obj = {**plan.to_json(), "model_spec": model_spec or model.name, "component": component}
    write_json(out / PLAN_FILE, obj)
    file_bytes = path.stat().st_size
    header = safetensors_header_bytes(path)
    fp16 = round(plan.bytes / plan.size_ratio)
    info = CheckpointInfo(out, file_bytes, header, file_bytes - header, plan.bytes, fp16, rounded)
    if echo is not None:
        echo(info.describe())
        if rounded:
            echo(f"note: {rounded} tensor(s) outside the quantized units were not FP16-exact and are stored rounded "
                 "to FP16: a model loaded from it carries that rounding (round_to_checkpoint_ applies it in memory)")
    return info


def _resolve_plan_path(run_dir: Path, plan_path: str | Path) -> Path:
    p = Path(plan_path)
    if not p.is_file() and not p.is_absolute() and (run_dir / p).is_file():
        return run_dir / p
    return p


def export_checkpoint(run_dir: str | Path, plan_path: str | Path, out_dir: str | Path, *, echo: Echo = print
                      ) -> CheckpointInfo:
    """Load the model of a calibration run (``run.json``), apply the plan with the run's statistics, save."""
    from anna import calibrate

    run_dir = Path(run_dir)
    run, model, component = calibrate.load_run_model(run_dir, "export")
    spec = run["model"]
    plan = load_plan(_resolve_plan_path(run_dir, plan_path), build_inventory(model, component))
    stats = calibrate.load_stats(run_dir)
    apply(model.component(component), plan, stats, echo=echo)
    return save_checkpoint(model, component, plan, out_dir, model_spec=spec, echo=echo)


# Loading


def read_checkpoint(ckpt_dir: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(plan.json object, tensors)`` of a checkpoint, with clear errors for missing, corrupt or foreign files."""
    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        raise AnnaError(f"checkpoint not found: {ckpt} (expected a folder with {TENSORS_FILE} and {PLAN_FILE})")
    obj = read_json(ckpt / PLAN_FILE, "checkpoint plan")
    path = ckpt / TENSORS_FILE
    if not path.is_file():
        raise AnnaError(f"checkpoint tensors not found: {path}")
    try:
        size = path.stat().st_size
        header = safetensors_header_bytes(path)
        if header > size:
            raise AnnaError(f"checkpoint tensors {path} are corrupt or truncated: the header claims {header:,} bytes, "
                            f"the file has {size:,}")
        with open(path, "rb") as f:
            f.seek(8)
            meta = json.loads(f.read(header - 8)).get("__metadata__") or {}
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise AnnaError(f"checkpoint tensors {path} are corrupt: bad safetensors header ({e})") from None
    if meta.get("format") != FORMAT:
        raise AnnaError(f"{path} is not an anna checkpoint (metadata format {meta.get('format')!r})")
    tensors = read_tensors(path, "checkpoint tensors")
    for key in ("model", "component"):
        if obj.get(key) is not None and meta.get(key) != obj.get(key):
            raise AnnaError(f"checkpoint {ckpt}: {PLAN_FILE} says {key} '{obj.get(key)}' but {TENSORS_FILE} holds "
                            f"'{meta.get(key)}'")
    return obj, tensors


def load_checkpoint_into(model: Model, ckpt_dir: str | Path, *, echo: Echo = print) -> Plan:
    """Rebuild the quantized component of ``model`` (a base model, as loaded) from a checkpoint, in place.

    Every tensor of the component comes from the checkpoint; a checkpoint that does not fit the model is an error
    (raised before the model is modified, except for a tensor of an attention unit that fails its own checks).
    """
    obj, tensors = read_checkpoint(ckpt_dir)
    component = obj.get("component") or model.default_component
    if component not in model.components:
        raise AnnaError(f"checkpoint {ckpt_dir} is for component '{component}', which {model.name} does not have")
    comp = model.component(component)
    already = next((n for n, m in comp.named_modules() if unit_option(m) is not None), None)
    if already is not None:
        raise AnnaError(f"{model.name}/{component} already holds quantized units (e.g. '{already}'): load a "
                        "checkpoint into a fresh base model")
    plan = plan_from_json(obj, build_inventory(model, component), source=f"checkpoint {ckpt_dir}")
    found = {name: (kind, module) for name, kind, module in unit_modules(comp)}
    quantized = {n: o for n, o in plan.units.items() if o != FP16}
    inside = tuple(f"{n}." for n in quantized)

    rest = [(n, t) for n, t in list(comp.named_parameters()) + list(comp.named_buffers()) if not n.startswith(inside)]
    for name, t in rest:
        if name not in tensors:
            raise AnnaError(f"checkpoint {ckpt_dir} lacks tensor '{name}' of {model.name}/{component}")
        src, want = tensors[name], (torch.float16 if t.is_floating_point() else t.dtype)
        if src.dtype != want or src.shape != t.shape:
            raise AnnaError(f"checkpoint {ckpt_dir}: tensor '{name}' is {src.dtype} {tuple(src.shape)}, expected "
                            f"{want} {tuple(t.shape)}")
    unit_keys = {n: {k[len(n) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{n}.")} for n in quantized}
    used = {n for n, _ in rest} | {f"{u}.{k}" for u, keys in unit_keys.items() for k in keys}
    extra = sorted(set(tensors) - used)
    if extra:
        raise AnnaError(f"checkpoint {ckpt_dir} holds {len(extra)} tensor(s) that {model.name}/{component} does not "
                        f"have, e.g. '{extra[0]}'")

    new_units: dict[str, nn.Module] = {}
    for name, opt in quantized.items():
        kind, module = found[name]
        if kind != "attention":
            new_units[name] = quant_option(opt).wrap(module, kind, unit_keys[name], where=f"checkpoint unit {name}")
    for name, opt in quantized.items():
        kind, module = found[name]
        if kind == "attention":
            new_units[name] = quant_option(opt).wrap(module, kind, unit_keys[name], where=f"checkpoint unit {name}")
    with torch.no_grad():
        for name, t in rest:
            t.copy_(tensors[name].to(t.device))
    for name, new in new_units.items():
        if new is not found[name][1]:
            parent, _, leaf = name.rpartition(".")
            setattr(comp.get_submodule(parent) if parent else comp, leaf, new)
    if echo is not None:
        n_q = len(quantized)
        echo(f"loaded checkpoint {ckpt_dir}: {model.name}/{component}, {n_q} quantized unit(s), "
             f"{len(plan.units) - n_q} in fp16, {plan.bytes:,} bytes (size ratio {plan.size_ratio:.4f})")
    return plan


def load_checkpoint(ckpt_dir: str | Path, *, echo: Echo = print) -> Model:
    """Load the base model that ``plan.json`` names (``model_spec``) and rebuild the checkpoint's component on it."""
    from anna.adapters import load_model

    obj = read_json(Path(ckpt_dir) / PLAN_FILE, "checkpoint plan")
    spec = obj.get("model_spec") or obj.get("model")
    if not spec:
        raise AnnaError(f"checkpoint {ckpt_dir}: {PLAN_FILE} names no model; use load_checkpoint_into(model, ckpt)")
    model = load_model(spec)
    load_checkpoint_into(model, ckpt_dir, echo=echo)
    return model


def checkpoint_bytes(ckpt_dir: str | Path) -> Mapping[str, int]:
    """File, header and tensor bytes of a checkpoint's ``model.safetensors``."""
    path = Path(ckpt_dir) / TENSORS_FILE
    size = path.stat().st_size
    header = safetensors_header_bytes(path)
    return {"file_bytes": size, "header_bytes": header, "tensor_bytes": size - header}
