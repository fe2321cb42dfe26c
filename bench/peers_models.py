"""The networks that bench/peers.py compares anna and ModelOpt on, and the peer's byte accounting.

Each case gives a calibration model and a held-out model: two generic `anna.adapters.from_module` views of the same
module whose batches are the calibration and the held-out inputs, so that anna (calibrate + analyze + search) and
ModelOpt (`auto_quantize`'s calibration and scoring) read the very same batches, and every figure is measured on the
held-out ones.

- `minilm`: the real MiniLM encoder on COCO caption rows (sentence-embedding MSE).
- `tiny-sdxl` / `tiny-t2i`, component `unet` or `vae_decoder`: the pipeline runs once per prompt (seed = the prompt's
  index, the model's default steps and guidance, as `anna calibrate` does) and every call of the component is
  recorded; the calls are split into rows (one per sample of the call's batch, classifier-free guidance's two halves
  included) and the rows stacked into batches. The error is the component's output MSE on held-out rows (UNet: its
  predicted sample; VAE decoder: the image).

Peer plans and anna's units. anna's unit is one Conv2d, one Linear outside attention, or one attention module (its
q/k/v/out Linears plus the attention math); ModelOpt chooses per Linear and per Conv2d. So a peer choice maps onto
anna's accounting as: a Conv2d or a Linear outside attention = that unit, FP8 = anna's `fp8-absmax` bytes of it; the
Linears of one attention unit = that unit with the projections the peer left unquantized in FP16 and the attention
math in FP16 (ModelOpt quantizes no attention math here), i.e. anna's `fp8-absmax-fp16math[-fp16...]` bytes (one
input scale per quantized projection). `PeerBytes` gives those bytes, and tests/bench/test_peers_bytes.py checks them
against `anna.options.registry.option_bytes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from anna.adapters import builtin_prompts, from_module, load_model
from anna.adapters.base import Model
from anna.inventory import build_inventory
from anna.options.attention_fp16math import ROLES, attention_projections
from anna.options.registry import FP16, quant_option
from anna.prompts import load_prompts
from anna.units import unit_modules

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco2014_val_captions.tsv"
MODELS = ("minilm", "tiny-sdxl", "tiny-t2i")


class PeerBytes:
    """anna's byte accounting of a per-Linear/per-Conv2d FP8/FP16 choice: the component in FP16, minus, for every
    FP8 Linear or Conv2d, its weight's second byte less one FP32 scale per output channel and one per input activation
    (anna's FP8 storage: `fp8-absmax` on a conv or linear unit, `fp8-absmax-fp16math[-fp16...]` on the quantized
    projections of an attention unit)."""

    def __init__(self, module: nn.Module, total_fp16: int) -> None:
        st = quant_option("fp8-absmax").storage
        layers = {name: m for name, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        self.total = total_fp16
        self.saving = {
            name: m.weight.numel() * (2 - st.weight_bytes) - st.channel_bytes * m.weight.shape[0] - st.activation_bytes
            for name, m in layers.items()
        }
        self.numel = {name: m.weight.numel() for name, m in layers.items()}

    def of(self, fp8: set[str]) -> int:
        unknown = fp8 - set(self.saving)
        if unknown:
            raise KeyError(f"not a Linear or Conv2d of the component: {sorted(unknown)[:3]}")
        return self.total - sum(self.saving[n] for n in fp8)


def anna_assignment(module: nn.Module, fp8: set[str]) -> dict[str, str]:
    """The anna plan that stores what a peer choice stores: the FP8 Linears and Conv2ds `fp8` (names within the
    component) as `fp8-absmax` units, an attention unit's FP8 projections as `fp8-absmax-fp16math` with the others
    in FP16 (`-fp16k`, `-fp16qv`, ...; `fp16` when none is FP8). Its bytes are `PeerBytes.of(fp8)`."""
    plan = {}
    for name, kind, unit in unit_modules(module):
        if kind != "attention":
            plan[name] = "fp8-absmax" if name in fp8 else FP16
            continue
        paths = attention_projections(unit, name)
        kept = "".join(r for r in ROLES if f"{name}.{paths[r]}" not in fp8)
        plan[name] = FP16 if kept == "".join(ROLES) else "fp8-absmax-fp16math" + (f"-fp16{kept}" if kept else "")
    return plan


@dataclass
class PeerCase:
    """One network of the comparison: calibration and held-out views of one module, and what the data is."""

    name: str
    calib: Model
    heldout: Model
    total_fp16: int
    data: dict[str, Any]


def minilm_case(calib_rows: str, test_rows: str) -> PeerCase:
    """MiniLM on COCO caption rows (its own batches of 32 sentences)."""
    from anna.adapters import minilm

    calib = minilm.load(load_prompts(f"{COCO}:{calib_rows}"))
    heldout = minilm.load(load_prompts(f"{COCO}:{test_rows}"))
    return PeerCase(calib.name, calib, heldout, build_inventory(calib).total_bytes_fp16,
                    {"calib_rows": calib_rows, "test_rows": test_rows})


def record_calls(model: Model, component: str, prompts: Sequence[str], desc: str) -> list[tuple[tuple, dict]]:
    """Every call of the pipeline component, `(args, kwargs)`, over one pipeline run per prompt (seed i)."""
    s = model.defaults
    module = model.component(component)
    calls: list[tuple[tuple, dict]] = []
    hook = module.register_forward_pre_hook(lambda _m, a, k: calls.append((a, k)), with_kwargs=True)
    try:
        with torch.inference_mode():
            for i, prompt in enumerate(tqdm(prompts, desc=desc, leave=False)):
                model.pipeline(prompt=prompt, num_inference_steps=s.steps, guidance_scale=s.guidance, height=s.height,
                               width=s.width, generator=torch.Generator("cpu").manual_seed(i),
                               output_type="pt" if component == "vae_decoder" else "latent")
    finally:
        hook.remove()
    return calls


def unet_rows(calls: list[tuple[tuple, dict]]) -> list[dict[str, torch.Tensor]]:
    """One dict per sample of each recorded UNet call: latent, timestep, text states, pooled text, time ids."""
    rows = []
    for args, kwargs in calls:
        x, t = args[0], torch.as_tensor(args[1]).float().reshape(-1)
        cond = kwargs["added_cond_kwargs"]
        for b in range(x.shape[0]):
            rows.append({"sample": x[b], "timestep": t[b % t.numel()], "encoder_hidden_states":
                         kwargs["encoder_hidden_states"][b], "text_embeds": cond["text_embeds"][b],
                         "time_ids": cond["time_ids"][b]})
    return rows


def unet_forward(module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The UNet's predicted sample for a stacked batch of rows."""
    return module(batch["sample"], batch["timestep"], encoder_hidden_states=batch["encoder_hidden_states"],
                  added_cond_kwargs={"text_embeds": batch["text_embeds"], "time_ids": batch["time_ids"]},
                  return_dict=False)[0]


def decoder_rows(calls: list[tuple[tuple, dict]]) -> list[dict[str, torch.Tensor]]:
    return [{"z": z} for args, _ in calls for z in args[0]]


def decoder_forward(module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The VAE decoder's image for a stacked batch of latents."""
    return module(batch["z"])


def stack(rows: list[dict[str, torch.Tensor]], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Rows stacked into batches of `batch_size` (the last one may be shorter)."""
    return [{k: torch.stack([r[k] for r in rows[i : i + batch_size]]).clone() for k in rows[0]}
            for i in range(0, len(rows), batch_size)]


def rotate_calls(calls: list, per_prompt: int, keep: int | None) -> list:
    """`keep` of each prompt's `per_prompt` calls, rotating (prompt i keeps calls i, i+1, ... mod `per_prompt`), so
    that every step is seen equally often; None keeps all."""
    if keep is None or keep >= per_prompt:
        return calls
    return [c for k, c in enumerate(calls) if (k % per_prompt - k // per_prompt) % per_prompt < keep]


def pipeline_case(spec: str, component: str, calib_prompts: Sequence[str], test_prompts: Sequence[str],
                  batch_size: int, data: dict[str, Any], calib_calls: int | None = None) -> PeerCase:
    """A built-in pipeline's component, with the inputs it receives on the calibration and the held-out prompts
    (for calibration, `calib_calls` of each prompt's component calls, rotating over the steps; default all)."""
    model = load_model(spec)
    module = model.component(component)
    rows_of, forward = (unet_rows, unet_forward) if component == "unet" else (decoder_rows, decoder_forward)
    per_prompt = model.defaults.steps if component == "unet" else 1
    views = []
    for prompts, what in ((calib_prompts, "calib"), (test_prompts, "test")):
        calls = record_calls(model, component, prompts, f"record {component} ({what})")
        rows = rows_of(rotate_calls(calls, per_prompt, calib_calls if what == "calib" else None))
        views.append((from_module(module, stack(rows, batch_size), forward=forward, name=f"{spec}/{component}"),
                      len(rows)))
    (calib, n_calib), (heldout, n_test) = views
    data = {**data, "component": component, "calib_calls_per_prompt": min(calib_calls or per_prompt, per_prompt),
            "test_calls_per_prompt": per_prompt, "calib_inputs": n_calib, "test_inputs": n_test,
            "batch_size": batch_size, "steps": model.defaults.steps, "guidance": model.defaults.guidance}
    return PeerCase(f"{spec}/{component}", calib, heldout, build_inventory(calib).total_bytes_fp16, data)


def load_case(model: str, component: str, calib_rows: str, test_rows: str, batch_size: int,
              calib_calls: int | None = None) -> PeerCase:
    """The case for `--model`. COCO rows for MiniLM and tiny-sdxl; tiny-t2i's prompts are its own domain's, so its
    calibration and test rows index its built-in held-out prompts (`anna.adapters.builtin_prompts`, 200 captions it
    was never trained on: `anna run` calibrates on the first ones) and the two ranges must not overlap."""
    if model == "minilm":
        return minilm_case(calib_rows, test_rows)
    if model == "tiny-sdxl":
        calib = load_prompts(f"{COCO}:{calib_rows}")
        test = load_prompts(f"{COCO}:{test_rows}")
        return pipeline_case(model, component, calib, test, batch_size,
                             {"prompts": "COCO", "calib_rows": calib_rows, "test_rows": test_rows}, calib_calls)
    if model == "tiny-t2i":
        own = builtin_prompts(model)
        (c0, c1), (t0, t1) = _span(calib_rows), _span(test_rows)
        if max(c1, t1) > len(own) or not (c1 < t0 or t1 < c0):
            raise SystemExit(f"tiny-t2i: rows must lie within 1-{len(own)} and not overlap ({calib_rows}, {test_rows})")
        return pipeline_case(model, component, own[c0 - 1 : c1], own[t0 - 1 : t1], batch_size,
                             {"prompts": "tiny-t2i built-in held-out captions", "calib_rows": calib_rows,
                              "test_rows": test_rows}, calib_calls)
    raise SystemExit(f"unknown model {model}: one of {', '.join(MODELS)}")


def _span(rows: str) -> tuple[int, int]:
    lo, _, hi = rows.partition("-")
    return int(lo), int(hi or lo)


def initial_bits(accounting: PeerBytes, total_fp16: int, budget: int) -> float:
    """auto_quantize's `effective_bits` that, by the average saving per weight element, meets `budget` bytes."""
    n_total = sum(accounting.numel.values())
    needed = total_fp16 - budget
    avg = sum(accounting.saving.values()) / n_total
    return 16 * (1 - needed / avg / (2 * n_total)) if math.isfinite(avg) and avg > 0 else 16.0
