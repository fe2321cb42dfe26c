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
(``units.unit_bytes``) exactly. ``plan.json`` is the plan plus ``model_spec`` and ``component``. Loading never
unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anna.adapters.base import Model
from anna.artifacts import FORMAT_VERSION, read_json, read_tensors, write_json, write_tensors
from anna.errors import AnnaError
from anna.inventory import build_inventory
from anna.options.apply import apply
from anna.options.handle import QuantHandle
from anna.options.registry import FP16, get_option
from anna.options.wrappers import unit_option, unit_state
from anna.plan import Plan, check_plan_shape, load_plan, plan_from_json

TENSORS_FILE = "model.safetensors"
PLAN_FILE = "plan.json"
FORMAT = "anna-checkpoint"
UNITS_META = "quantized_units"  # metadata: JSON {unit: option} of the quantized units, checked against plan.json

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


def checkpoint_rounding(component: nn.Module, plan: Plan) -> dict[str, Tensor]:
    """The tensors outside the plan's quantized units that storing them in FP16 changes: name -> the FP16-rounded
    value, in the tensor's own dtype (empty for a base model that is already FP16-exact)."""
    inside = tuple(f"{n}." for n, o in plan.units.items() if o != FP16)
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, t in list(component.named_parameters()) + list(component.named_buffers()):
            if name.startswith(inside) or not t.is_floating_point():
                continue
            h = t.to(torch.float16).to(t.dtype)
            if not torch.equal(h, t):
                out[name] = h
    return out


def round_to_checkpoint_(component: nn.Module, plan: Plan) -> int:
    """Round, in place, every tensor that the checkpoint stores in FP16 (outside the quantized units) to its FP16
    value, keeping its dtype; returns how many tensors changed.

    Afterwards the in-memory model is exactly what loading its checkpoint gives. ``apply`` does not do this by itself:
    it leaves the units that a plan keeps in fp16 untouched. For a base model that is already FP16-exact (SDXL's
    published FP16 weights) it changes nothing.
    """
    changed = checkpoint_rounding(component, plan)
    QuantHandle(component, reversible=False).set_tensors(changed)
    return len(changed)


def save_checkpoint(
    model: Model,
    component: str | None,
    plan: Plan,
    out_dir: str | Path,
    *,
    model_spec: str | None = None,
    echo: Echo = print,
    inputs: dict[str, Any] | None = None,
) -> CheckpointInfo:
    """Write ``out_dir/model.safetensors`` and ``out_dir/plan.json`` for a component that ``plan`` was applied to.

    ``model_spec`` is what ``load_model`` rebuilds the base model from (default: the model's name). ``inputs``
    (digests of what the checkpoint was made from) is recorded in ``plan.json``, so a stale checkpoint can be told.
    """
    component = component or plan.component or model.default_component
    if plan.model != model.name or plan.component != component:
        raise AnnaError(f"plan is for {plan.model}/{plan.component}, not {model.name}/{component}")
    comp = model.component(component)
    tensors, rounded = checkpoint_tensors(comp, plan)
    out = Path(out_dir)
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "model": model.name, "component": component,
            UNITS_META: json.dumps({n: o for n, o in plan.units.items() if o != FP16}, separators=(",", ":"))}
    path = write_tensors(out / TENSORS_FILE, tensors, metadata=meta)
    obj = {**plan.to_json(), "model_spec": model_spec or model.name, "component": component}
    if inputs is not None:
        obj["inputs"] = inputs
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


def export_checkpoint(run_dir: str | Path, plan_path: str | Path, out_dir: str | Path, *, echo: Echo = print,
                      model: Model | None = None) -> CheckpointInfo:
    """Apply the plan to the model of a calibration run with the run's statistics, and save the checkpoint.

    Without ``model`` the run's model is loaded (``run.json``) and quantized for good; a given ``model`` (the run's
    own, already loaded) is quantized through a reversible handle and left as it was, so one model serves a sweep.
    """
    from anna import calibrate

    run_dir = Path(run_dir)
    given = model is not None
    run, model, component = calibrate.load_run_model(run_dir, "export", model)
    spec = run["model"]
    plan_path = _resolve_plan_path(run_dir, plan_path)
    plan = load_plan(plan_path, build_inventory(model, component))
    plan = replace(plan, extra={k: v for k, v in plan.extra.items() if k != "inputs"})
    stats = calibrate.load_stats(run_dir)
    comp = model.component(component)
    with QuantHandle(comp, reversible=given) as handle:
        apply(comp, plan, stats, echo=echo, handle=handle)
        return save_checkpoint(model, component, plan, out_dir, model_spec=spec, echo=echo,
                               inputs=checkpoint_inputs(run_dir, plan_path))


def checkpoint_inputs(run_dir: str | Path, plan_path: str | Path) -> dict[str, Any]:
    """What a checkpoint exported from a run is made from: digests of its plan file and of the calibration."""
    from anna.runfolder import RunFolder, file_digest

    return {"plan": file_digest(plan_path), "calibration": RunFolder(run_dir).calibration_digest()}


def is_stale(ckpt_dir: str | Path, run_dir: str | Path, plan_path: str | Path) -> bool:
    """Whether a checkpoint folder is missing, or was exported from another plan or calibration than the run's."""
    path = Path(ckpt_dir) / PLAN_FILE
    if not path.is_file() or not (Path(ckpt_dir) / TENSORS_FILE).is_file():
        return True
    try:
        recorded = json.loads(path.read_text()).get("inputs")
    except (OSError, ValueError):
        return True
    return recorded != checkpoint_inputs(run_dir, plan_path)


# Loading


def _read_header(path: Path) -> dict[str, Any]:
    """The safetensors header of ``path``, checked against the file's size (a truncated file is found here)."""
    try:
        size = path.stat().st_size
        header = safetensors_header_bytes(path)
        if header > size:
            raise AnnaError(f"checkpoint tensors {path} are corrupt or truncated: the header claims {header:,} bytes, "
                            f"the file has {size:,}")
        with open(path, "rb") as f:
            f.seek(8)
            head = json.loads(f.read(header - 8))
        ends = [int(v["data_offsets"][1]) for k, v in head.items() if k != "__metadata__"]
    except (ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError, IndexError) as e:
        raise AnnaError(f"checkpoint tensors {path} are corrupt: bad safetensors header ({e})") from None
    if header + max(ends, default=0) != size:
        raise AnnaError(f"checkpoint tensors {path} are corrupt or truncated: the header describes "
                        f"{header + max(ends, default=0):,} bytes, the file has {size:,}; export it again")
    return head


def verify_checkpoint(ckpt_dir: str | Path) -> dict[str, Any]:
    """Check a checkpoint without reading its tensor data: ``plan.json``, the header, the file size, and that the
    plan names the options its tensors were saved with. Returns the plan object."""
    ckpt = Path(ckpt_dir).expanduser()
    if not ckpt.is_dir():
        what = f"checkpoint {ckpt} is a file, not a folder" if ckpt.exists() else f"checkpoint not found: {ckpt}"
        raise AnnaError(f"{what} (expected a folder with {TENSORS_FILE} and {PLAN_FILE})")
    obj = read_json(ckpt / PLAN_FILE, "checkpoint plan")
    check_plan_shape(obj, f"checkpoint plan {ckpt / PLAN_FILE}")
    path = ckpt / TENSORS_FILE
    if not path.is_file():
        raise AnnaError(f"checkpoint tensors not found: {path}")
    meta = _read_header(path).get("__metadata__") or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AnnaError(f"{path} is not an anna checkpoint (metadata format {meta.get('format')!r})")
    for key in ("model", "component"):
        if obj.get(key) is not None and meta.get(key) != obj.get(key):
            raise AnnaError(f"checkpoint {ckpt}: {PLAN_FILE} says {key} '{obj.get(key)}' but {TENSORS_FILE} holds "
                            f"'{meta.get(key)}'")
    if UNITS_META in meta:  # checkpoints written before it was recorded are checked by their tensors alone
        try:
            saved = json.loads(meta[UNITS_META])
        except json.JSONDecodeError:
            raise AnnaError(f"checkpoint tensors {path} are corrupt: bad '{UNITS_META}' metadata") from None
        named, default = obj.get("units", {}), obj.get("default", FP16)
        for unit in sorted(set(saved) | set(named)):
            said, held = named.get(unit, default), saved.get(unit, FP16)
            get_option(said)
            if said != held:
                raise AnnaError(f"checkpoint {ckpt}: {PLAN_FILE} says unit '{unit}' is {said}, but {TENSORS_FILE} "
                                f"holds it as {held}: the plan was edited; restore it or export the checkpoint again")
    return obj


def read_checkpoint(ckpt_dir: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(plan.json object, tensors)`` of a checkpoint, with clear errors for missing, corrupt or foreign files."""
    obj = verify_checkpoint(ckpt_dir)
    return obj, read_tensors(Path(ckpt_dir).expanduser() / TENSORS_FILE, "checkpoint tensors")


def load_checkpoint_into(model: Model, ckpt_dir: str | Path, *, echo: Echo = print,
                         handle: QuantHandle | None = None) -> Plan:
    """Rebuild the quantized component of ``model`` (a base model, as loaded) from a checkpoint, in place.

    Every tensor of the component comes from the checkpoint; a checkpoint that does not fit the model is an error,
    and the model is left as it was. The changes go through ``handle`` when one is given (a reversible
    ``QuantHandle`` of the component: ``handle.undo()`` restores the base model, so one loaded pipeline serves many
    checkpoints); otherwise they are made for good.
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

    own = handle is None
    if own:
        handle = QuantHandle(comp)  # reversible while loading, so that a failing unit leaves the model as it was
    elif handle.component is not comp:
        raise AnnaError(f"the handle given to load_checkpoint_into is not for {model.name}/{component}")
    try:
        # Linear and conv units first: their wrappers are new modules; attention units are rebuilt last.
        order = sorted(quantized, key=lambda n: handle.unit(n)[0] == "attention")
        for name in order:
            handle.load_unit(name, quantized[name], unit_keys[name], where=f"checkpoint unit {name}")
        handle.set_tensors({name: tensors[name] for name, _ in rest})
    except BaseException:
        if own:
            handle.undo()
        raise
    if own:
        handle.commit()
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
