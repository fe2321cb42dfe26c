"""`anna export --format onnx-qdq`: the text encoders, the UNet and the VAE decoder as ONNX QDQ graphs.

Per component: export FP32 with fixed shapes (`onnx_export`), preprocess (`onnx_prep`: layer-norm fusion, finite mask
fill), then static QDQ quantization (`onnx_quant`: QUInt8 weights per channel, QUInt16 activations, MinMax) on real
inputs. The run's own component calibrates on the inputs that calibration cached; the other components' inputs are
captured by running the pipeline on the run's prompts with calibration's own driver (`anna.calibrate.drivers`).
A plan drives the run's component: the nodes of its FP16 units are excluded from quantization; a plan that uses an
option ONNX QDQ cannot express (anything but `fp16` and `qdq-u8u16`) is refused. Components without a plan are
fully quantized (unless listed in `float_components`). The folder is marked by `onnx_manifest.json`.

Layout: `OUT/onnx_manifest.json`, `OUT/<component>.onnx` (QDQ, or FP32 for a float component), with
`OUT/<component>.onnx.data` when weights exceed the external-data threshold, and `OUT/<component>.fp32.onnx` when
`keep_fp32` is set (the bench compares the two).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anna.adapters.base import GenerationSettings, Model
from anna.artifacts import write_json
from anna.errors import AnnaError
from anna.export.onnx_export import (
    EXTERNAL_DATA_THRESHOLD,
    OPSET,
    ComponentSpec,
    GenericGraph,
    TensorSpec,
    component_specs,
    export_component,
    export_graph,
    feed_from_call,
    model_bytes,
    model_files,
    save_model,
    unit_nodes,
)
from anna.export.onnx_prep import MASK_FILL, preprocess
from anna.export.onnx_quant import QDQSettings, quantize_graph
from anna.options.registry import FP16
from anna.plan import Plan
from anna.units import unit_modules

MANIFEST = "onnx_manifest.json"
FORMAT = "anna-onnx"
EXPORTER = "torch.onnx.export(dynamo=True)"
QDQ_OPTION = "qdq-u8u16"

Echo = Callable[[str], Any] | None


def require_onnx() -> None:
    """onnx, onnxruntime and onnxscript come with the `onnx` extra; say so in one line when one is missing."""
    import importlib

    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise AnnaError(f"ONNX export needs the package {name}: pip install 'anna[onnx]'") from None


def _say(echo: Echo, msg: str) -> None:
    if echo is not None:
        echo(msg)


def _plan_exclusions(plan: Plan | None, component: str, proto: Any, module: torch.nn.Module) -> dict[str, Any]:
    """The FP16 units of the plan for this component and their node names in the exported graph."""
    if plan is None or plan.component != component:
        return {"fp16_units": [], "nodes": [], "units_without_nodes": [], "options": {}}
    names = [n for n, _, _ in unit_modules(module)]
    unknown = sorted(set(plan.units) - set(names))
    if unknown:
        raise AnnaError(f"plan names unit '{unknown[0]}' that {component} does not have: is it a plan for another "
                        "model?")
    fp16 = [u for u in names if plan.units.get(u, FP16) == FP16]
    nodes = unit_nodes(proto, fp16)
    options: dict[str, int] = {}
    for u in names:
        opt = plan.units.get(u, FP16)
        options[opt] = options.get(opt, 0) + 1
    return {"fp16_units": fp16, "nodes": sorted({n for u in fp16 for n in nodes[u]}),
            "units_without_nodes": [u for u in fp16 if not nodes[u]], "options": options}


def check_expressible(plan: Plan | None) -> None:
    """ONNX QDQ expresses `fp16` (the unit's nodes stay in float) and `qdq-u8u16` only; a plan that uses any other
    option is refused with the units it names (never exported as something else)."""
    if plan is None:
        return
    other = sorted(set(plan.units.values()) - {FP16, QDQ_OPTION})
    if other:
        units = [u for u, o in plan.units.items() if o in other]
        raise AnnaError(f"ONNX QDQ export cannot express option(s) {', '.join(other)} ({len(units)} unit(s), e.g. "
                        f"'{units[0]}'): export this plan as safetensors, or search with --bag fp16,{QDQ_OPTION} "
                        "for a plan ONNX can express")


def copy_model(src: Path, dst: Path, threshold: int) -> None:
    """Re-save a model under another name (its external data file is named after the model file)."""
    import onnx

    save_model(onnx.load(str(src)), dst, threshold)


def capture_component_inputs(
    model: Model, component: str, prompts: Sequence[str], settings: GenerationSettings, *, seed: int = 0,
    samples: int = 16,
) -> list[tuple[tuple, dict]]:
    """`samples` (args, kwargs) calls of a pipeline component, captured by calibration's pipeline driver on
    `prompts` (prompt i with seed + i, as calibration and generation run them)."""
    from anna.calibrate.cache import InputCache, plan_samples
    from anna.calibrate.drivers import PipelineDriver
    from anna.calibrate.tree import unflatten

    driver = PipelineDriver(model, component, prompts, settings, seed)
    cache = InputCache(plan_samples(driver.n_items, driver.calls_per_item, samples))
    items = sorted({item for item, _ in cache.plan})
    with driver.capturing(cache):
        for i in items:
            driver.run_item(i, lambda n: None)
    out = []
    for sample in cache.samples:
        args, kwargs = unflatten(sample["value"], cache.tensors)
        out.append((tuple(args), dict(kwargs)))
    return out


def _fp32_cpu(model: Model) -> None:
    """Export runs in FP32 on the CPU (an FP16 CUDA pipeline is converted in place)."""
    for module in model.components.values():
        if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in module.parameters()):
            module.to("cpu", torch.float32)
    pipe = model.pipeline
    if pipe is not None and getattr(pipe.vae, "post_quant_conv", None) is not None:
        pipe.vae.post_quant_conv.to("cpu", torch.float32)


def export_pipeline_onnx(
    model: Model,
    out_dir: str | Path,
    settings: GenerationSettings,
    prompts: Sequence[str],
    *,
    plan: Plan | None = None,
    run_component: str | None = None,
    cached_inputs: Sequence[tuple[tuple, dict]] | None = None,
    components: Sequence[str] | None = None,
    float_components: Sequence[str] = (),
    seed: int = 0,
    capture_samples: int = 16,
    keep_fp32: bool = False,
    mask_fill: float = MASK_FILL,
    qdq: QDQSettings = QDQSettings(),  # noqa: B008 (frozen)
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    model_spec: str | None = None,
    echo: Echo = print,
) -> dict[str, Any]:
    """Export an SDXL-type pipeline's components to `out_dir` as ONNX QDQ and write the manifest; returns it.

    `cached_inputs` (calibration's cached `(args, kwargs)` of `run_component`) calibrate that component; every other
    quantized component is captured by running the pipeline on `prompts` (`capture_samples` calls at most).
    """
    require_onnx()
    model.require_weights("export")
    if model.pipeline is None:
        raise AnnaError(f"model {model.name} is not a diffusion pipeline; use export_generic_onnx")
    specs = component_specs(model, settings)
    components = list(components or [c for c in ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
                                      if c in specs])
    for c in [*components, *float_components]:
        if c not in specs:
            raise AnnaError(f"unknown component '{c}' for ONNX export; choose from {', '.join(specs)}")
    if plan is not None:
        if plan.model != model.name:
            raise AnnaError(f"plan is for model '{plan.model}', not '{model.name}'")
        run_component = run_component or plan.component
        if plan.component != run_component:
            raise AnnaError(f"plan is for component '{plan.component}', but the run calibrated '{run_component}'")
        check_expressible(plan)
    quantized = [c for c in components if c not in float_components]

    # Calibration inputs: the run's cache for its component, a pipeline capture for the others.
    feeds: dict[str, list[dict[str, np.ndarray]]] = {}
    sources: dict[str, str] = {}
    for c in quantized:
        if c == run_component and cached_inputs:
            feeds[c] = [feed_from_call(model, specs[c], a, k) for a, k in cached_inputs]
            sources[c] = "calibration cache"
    missing = [c for c in quantized if c not in feeds]
    if missing and not prompts:
        raise AnnaError(f"no prompts to capture calibration inputs of {', '.join(missing)}")
    for c in missing:
        t0 = time.perf_counter()
        calls = capture_component_inputs(model, c, prompts, settings, seed=seed, samples=capture_samples)
        feeds[c] = [feed_from_call(model, specs[c], a, k) for a, k in calls]
        sources[c] = f"pipeline capture on {min(len(prompts), capture_samples)} prompt(s)"
        _say(echo, f"captured {len(calls)} input(s) of {c} in {time.perf_counter() - t0:.1f}s")

    _fp32_cpu(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".onnx-work.", dir=out))
    entries: dict[str, Any] = {}
    try:
        for c in components:
            entries[c] = _export_one(model, c, specs[c], out, work, feeds.get(c), plan,
                                     keep_fp32=keep_fp32, mask_fill=mask_fill, qdq=qdq,
                                     threshold=external_data_threshold, source=sources.get(c), echo=echo)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest = {
        "format": FORMAT,
        "kind": "pipeline",
        "model": model.name,
        "model_spec": model_spec or model.name,
        "opset": OPSET,
        "exporter": EXPORTER,
        "settings": asdict(settings),
        "classifier_free_guidance": specs["unet"].inputs[0].shape[0] == 2,
        "quantization": {**qdq.to_json(), "mask_fill": mask_fill},
        "run_component": run_component,
        "plan": None if plan is None else plan.to_json(),
        "external_data_threshold": external_data_threshold,
        "components": entries,
    }
    write_json(out / MANIFEST, manifest)
    total = sum(e["bytes"] for e in entries.values())
    _say(echo, f"wrote ONNX QDQ export of {model.name} to {out}: {', '.join(entries)}; {total:,} bytes")
    return manifest


def _export_one(
    model: Model, component: str, spec: ComponentSpec, out: Path, work: Path,
    feeds: list[dict[str, np.ndarray]] | None, plan: Plan | None, *, keep_fp32: bool, mask_fill: float,
    qdq: QDQSettings, threshold: int, source: str | None, echo: Echo,
) -> dict[str, Any]:
    """Export, preprocess and (unless `feeds` is None) quantize one component; its manifest entry."""
    t0 = time.perf_counter()
    reports: dict[str, Any] = {}

    def prepare(proto: Any) -> Any:
        proto, reports["prep"] = preprocess(proto, mask_fill)
        reports["exclusions"] = _plan_exclusions(plan, component, proto, model.component(component))
        return proto

    fp32 = (out if keep_fp32 else work) / f"{component}.fp32.onnx"
    export_component(model, component, spec, fp32, external_data_threshold=threshold, prepare=prepare)
    excl = reports["exclusions"]
    entry: dict[str, Any] = {
        "file": f"{component}.onnx",
        "inputs": {t.name: t.to_json() for t in spec.inputs},
        "outputs": list(spec.outputs),
        "preprocess": reports["prep"].to_json(),
        "fp32_bytes": model_bytes(fp32),
        "fp32_file": fp32.name if keep_fp32 else None,
    }
    target = out / f"{component}.onnx"
    if feeds is None:
        copy_model(fp32, target, threshold)
        entry.update(quantized=False)
        _say(echo, f"{component}: exported FP32 (not quantized) in {time.perf_counter() - t0:.1f}s")
    else:
        report = quantize_graph(fp32, target, feeds, nodes_to_exclude=excl["nodes"], settings=qdq,
                                external_data_threshold=threshold)
        entry.update(quantized=True, calibration=source, fp16_units=excl["fp16_units"],
                     units_without_nodes=excl["units_without_nodes"], plan_options=excl["options"],
                     **report.to_json())
        _say(echo, f"{component}: QDQ with {report.samples} calibration input(s), {len(excl['fp16_units'])} FP16 "
                   f"unit(s) ({report.excluded_nodes} nodes) kept in float, in {time.perf_counter() - t0:.1f}s")
    entry["external_data"] = (out / (target.name + ".data")).is_file()
    entry["bytes"] = model_bytes(target)
    return entry


def export_onnx_qdq(
    run_dir: str | Path, plan_path: str | Path | None, out_dir: str | Path, *, echo: Echo = print, **options: Any
) -> dict[str, Any]:
    """The command's entry: load the run's model, settings, prompts and cached inputs, the plan, then export."""
    from anna import calibrate
    from anna.inventory import build_inventory
    from anna.plan import load_plan

    require_onnx()
    run_dir = Path(run_dir)
    run, model, component = calibrate.load_run_model(run_dir, "export")
    spec = run["model"]
    if model.pipeline is None:
        raise AnnaError(f"model {spec} is not a diffusion pipeline: export generic models with export_generic_onnx")
    plan = None
    if plan_path is not None:
        p = Path(plan_path)
        if not p.is_file() and not p.is_absolute() and (run_dir / p).is_file():
            p = run_dir / p
        plan = load_plan(p, build_inventory(model, component))
    settings = GenerationSettings(**run["settings"]) if run.get("settings") else model.defaults
    prompts = run.get("prompts") or []
    cached = calibrate.load_cached_inputs(run_dir)
    return export_pipeline_onnx(model, out_dir, settings, prompts, plan=plan, run_component=component,
                                cached_inputs=cached, seed=int(run.get("seed") or 0), model_spec=spec, echo=echo,
                                **options)


# Generic modules (MiniLM and any model from the Python API)


def _batch_tensors(batch: Any) -> dict[str, torch.Tensor]:
    if not isinstance(batch, Mapping):
        raise AnnaError("ONNX export of a generic model needs dict batches (input name -> tensor)")
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def export_generic_onnx(
    model: Model,
    out_dir: str | Path,
    *,
    calibration_batches: Sequence[Any] | None = None,
    plan: Plan | None = None,
    quantize: bool = True,
    keep_fp32: bool = True,
    mask_fill: float = MASK_FILL,
    qdq: QDQSettings = QDQSettings(),  # noqa: B008 (frozen)
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    echo: Echo = print,
) -> dict[str, Any]:
    """Export a generic model's `forward(module, batch)` as `OUT/model.onnx` (QDQ) and `OUT/model.fp32.onnx`.

    Dims that differ between the calibration batches (batch size, sequence length) are dynamic. The calibration
    batches default to the model's own batches.
    """
    require_onnx()
    check_expressible(plan)
    if model.forward is None:
        raise AnnaError(f"model {model.name} has no forward function to export")
    component = next(iter(model.components))
    module = model.component(component).eval()
    batches = [_batch_tensors(b) for b in (calibration_batches if calibration_batches is not None
                                           else model.batches or [])]
    if not batches:
        raise AnnaError(f"model {model.name} has no batches to export and calibrate with")
    names = list(batches[0])
    varying = {n: {d for b in batches for d in range(b[n].dim()) if b[n].shape[d] != batches[0][n].shape[d]}
               for n in names}
    dynamic = any(varying.values())
    dyn_shapes = None
    if dynamic:
        auto = torch.export.Dim.AUTO
        dyn_shapes = (tuple({d: auto for d in sorted(varying[n])} or None for n in names),)
    wrapper = GenericGraph(module, model.forward, names).eval()
    proto = export_graph(wrapper, [batches[0][n] for n in names], names, ["output"], dynamic_shapes=dyn_shapes)
    proto, prep = preprocess(proto, mask_fill)
    excl = _plan_exclusions(plan, component, proto, module)
    graph_inputs = {i.name: i for i in proto.graph.input}
    specs = [TensorSpec(n, tuple(d.dim_param or d.dim_value for d in graph_inputs[n].type.tensor_type.shape.dim),
                        str(batches[0][n].numpy().dtype)) for n in names if n in graph_inputs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / f"{component}.fp32.onnx"
    save_model(proto, fp32, external_data_threshold)
    target = out / f"{component}.onnx"
    entry: dict[str, Any] = {"file": target.name, "fp32_file": fp32.name if keep_fp32 else None,
                             "inputs": {t.name: t.to_json() for t in specs}, "outputs": ["output"],
                             "preprocess": prep.to_json(), "fp32_bytes": model_bytes(fp32)}
    if quantize:
        feeds = [{n: b[n].numpy() for n in graph_inputs if n in b} for b in batches]
        report = quantize_graph(fp32, target, feeds, nodes_to_exclude=excl["nodes"], settings=qdq,
                                external_data_threshold=external_data_threshold)
        entry.update(quantized=True, calibration="calibration batches", fp16_units=excl["fp16_units"],
                     units_without_nodes=excl["units_without_nodes"], plan_options=excl["options"],
                     **report.to_json())
    else:
        copy_model(fp32, target, external_data_threshold)
        entry.update(quantized=False)
    if not keep_fp32:
        for f in model_files(fp32):
            f.unlink()
    entry["external_data"] = (out / (target.name + ".data")).is_file()
    entry["bytes"] = model_bytes(target)
    manifest = {"format": FORMAT, "kind": "generic", "model": model.name, "model_spec": None, "opset": OPSET,
                "exporter": EXPORTER, "dynamic_shapes": dynamic, "quantization": {**qdq.to_json(),
                                                                                  "mask_fill": mask_fill},
                "run_component": component, "plan": None if plan is None else plan.to_json(),
                "external_data_threshold": external_data_threshold, "components": {component: entry}}
    write_json(out / MANIFEST, manifest)
    _say(echo, f"wrote ONNX export of {model.name} to {out} ({entry['bytes']:,} bytes)")
    return manifest
