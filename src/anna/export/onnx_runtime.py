"""Run an ONNX export with ONNX Runtime: an SDXL pipeline over ORT sessions, and generic models.

`OnnxSDXLPipeline` is a small peer of optimum's `ORTStableDiffusionXLPipeline`: the tokenizers, the scheduler, the
VAE's `post_quant_conv` and the image post-processing come from the base diffusers pipeline; the text encoders, the
UNet and the VAE decoder run as ORT sessions (CUDA execution provider when present, else CPU). It follows
`StableDiffusionXLPipeline.__call__` step by step (same noise from the same generator, same conditioning, diffusers'
scheduler does the stepping), so an FP32 export reproduces the PyTorch images. It is callable like the diffusers
pipeline, so `load_onnx_into(model, folder)` lets `anna generate` and `anna evaluate` use an ONNX folder as
`--checkpoint`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from anna.adapters.base import Model
from anna.artifacts import read_json
from anna.errors import AnnaError
from anna.export.onnx_export import SDXL_COMPONENTS
from anna.export.onnx_qdq import FORMAT, MANIFEST

VARIANTS = ("qdq", "fp32")


def is_onnx_folder(path: str | Path) -> bool:
    """Whether `path` is an ONNX export (a folder with `onnx_manifest.json`)."""
    return (Path(path) / MANIFEST).is_file()


def _file(entry: Mapping[str, Any], variant: str) -> str | None:
    return entry.get("file") if variant == "qdq" else entry.get("fp32_file")


def read_manifest(folder: str | Path, variant: str = "qdq") -> dict[str, Any]:
    """The manifest of an ONNX folder, checked: format, every SDXL component listed, every model file present."""
    folder = Path(folder)
    if variant not in VARIANTS:
        raise AnnaError(f"unknown ONNX variant '{variant}'; use one of {', '.join(VARIANTS)}")
    if not folder.is_dir():
        raise AnnaError(f"ONNX folder not found: {folder}")
    manifest = read_json(folder / MANIFEST, "ONNX manifest")
    if manifest.get("format") != FORMAT:
        raise AnnaError(f"{folder / MANIFEST} is not an anna ONNX manifest (format {manifest.get('format')!r})")
    comps = manifest.get("components")
    if not isinstance(comps, dict) or not comps:
        raise AnnaError(f"{folder / MANIFEST} lists no components")
    if manifest.get("kind") == "pipeline":
        absent = [c for c in SDXL_COMPONENTS if c not in comps]
        if absent:
            raise AnnaError(f"ONNX folder {folder} lacks component(s) {', '.join(absent)}: an SDXL pipeline needs "
                            f"{', '.join(SDXL_COMPONENTS)}")
    for name, entry in comps.items():
        fname = _file(entry, variant)
        if not fname:
            raise AnnaError(f"ONNX folder {folder} has no {variant} model of {name} (export with keep_fp32 for fp32)")
        if not (folder / fname).is_file():
            raise AnnaError(f"ONNX folder {folder} lacks {fname} (component {name}); re-run the export")
        if entry.get("external_data") and variant == "qdq" and not (folder / (fname + ".data")).is_file():
            raise AnnaError(f"ONNX folder {folder} lacks {fname}.data, the external weights of {name}")
    return manifest


def default_providers() -> list[str]:
    """CUDA when ORT has it, then CPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise AnnaError("running an ONNX export needs onnxruntime: pip install 'anna[onnx]'") from None

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def make_session(path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None) -> Any:
    """An ORT inference session for one model file, with a one-line error for a file ORT cannot load."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise AnnaError("running an ONNX export needs onnxruntime: pip install 'anna[onnx]'") from None

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers or default_providers()))
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise AnnaError(f"ONNX Runtime cannot load {path}: {type(e).__name__}: {first}") from None


class OnnxSession:
    """One component's session with its fixed input shapes and a record of its run times."""

    def __init__(self, path: Path, providers: Sequence[str] | None, threads: int | None = None) -> None:
        self.path = path
        self.session = make_session(path, providers, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.seconds: list[float] = []

    def __call__(self, **inputs: np.ndarray) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise AnnaError(f"{self.path.name} needs input(s) {missing}")
        t0 = time.perf_counter()
        out = self.session.run(None, {n: inputs[n] for n in self.input_names})
        self.seconds.append(time.perf_counter() - t0)
        return out


def _np(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().float().numpy())


class OnnxSDXLPipeline:
    """SDXL text-to-image over ORT sessions. Shapes are fixed at export: height, width and whether guidance is on."""

    def __init__(self, base: Any, folder: str | Path, variant: str = "qdq", providers: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder, variant)
        if self.manifest.get("kind") != "pipeline":
            raise AnnaError(f"ONNX folder {folder} holds a {self.manifest.get('kind')} model, not a pipeline")
        self.base, self.variant = base, variant
        self.scheduler = type(base.scheduler).from_config(base.scheduler.config)
        comps = self.manifest["components"]
        self.sessions = {c: OnnxSession(self.folder / _file(comps[c], variant), providers, threads)
                         for c in SDXL_COMPONENTS}
        s = self.manifest["settings"]
        self.height, self.width = int(s["height"]), int(s["width"])
        self.cfg = bool(self.manifest["classifier_free_guidance"])
        self.seconds: list[float] = []

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Accepted for compatibility with diffusers pipelines (there is no progress bar)."""

    def _check(self, height: int, width: int, guidance: float) -> None:
        if (height, width) != (self.height, self.width):
            raise AnnaError(f"this ONNX export has fixed shapes for {self.height}x{self.width}; asked for "
                            f"{height}x{width} (re-export with the run's settings)")
        if (guidance > 1.0) != self.cfg:
            want = "guidance > 1 (batch 2)" if self.cfg else "guidance <= 1 (batch 1)"
            raise AnnaError(f"this ONNX export was made for {want}; asked for guidance {guidance}")

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds (1, 77, D1 + D2), pooled (1, P)) as the diffusers pipeline computes them."""
        hidden, pooled = [], None
        for tok, comp in ((self.base.tokenizer, "text_encoder"), (self.base.tokenizer_2, "text_encoder_2")):
            ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="np").input_ids.astype(np.int64)
            penultimate, pooled_out = self.sessions[comp](input_ids=ids)
            hidden.append(torch.from_numpy(penultimate))
            pooled = torch.from_numpy(pooled_out)
        return torch.cat(hidden, dim=-1), pooled

    def __call__(
        self,
        prompt: str,
        num_inference_steps: int,
        guidance_scale: float,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | None = None,
        negative_prompt: str | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[..., Any] | None = None,
        **unused: Any,
    ) -> SimpleNamespace:
        from diffusers.utils.torch_utils import randn_tensor

        if not isinstance(prompt, str):
            raise AnnaError("the ONNX pipeline generates one prompt per call")
        height, width = height or self.height, width or self.width
        self._check(height, width, guidance_scale)
        t_start = time.perf_counter()
        base = self.base
        embeds, pooled = self.encode_prompt(prompt)
        if self.cfg:
            if negative_prompt is None and base.config.force_zeros_for_empty_prompt:
                neg, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
            else:
                neg, neg_pooled = self.encode_prompt(negative_prompt or "")
            embeds, pooled = torch.cat([neg, embeds]), torch.cat([neg_pooled, pooled])
        batch = embeds.shape[0]
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(batch, 1)
        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps, device="cpu")
        vsf = int(base.vae_scale_factor)
        channels = self.manifest["components"]["unet"]["inputs"]["sample"]["shape"][1]
        latents = randn_tensor((1, channels, height // vsf, width // vsf), generator=generator,
                               device=torch.device("cpu"), dtype=torch.float32) * scheduler.init_noise_sigma
        step_kwargs = {"generator": generator} if "generator" in _params(scheduler.step) else {}
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        feed = {"encoder_hidden_states": _np(embeds), "text_embeds": _np(pooled), "time_ids": _np(time_ids)}
        for i, t in enumerate(scheduler.timesteps):
            x = torch.cat([latents] * 2) if self.cfg else latents
            x = scheduler.scale_model_input(x, t)
            timestep = np.full((batch,), float(t), dtype=np.float32)
            (noise,) = self.sessions["unet"](sample=_np(x), timestep=timestep, **feed)
            noise_pred = torch.from_numpy(noise)
            if self.cfg:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (text - uncond)
            latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, t, {"latents": latents})
        if output_type == "latent":
            self.seconds.append(time.perf_counter() - t_start)
            return SimpleNamespace(images=latents)
        image = self.decode(latents)
        if getattr(base, "watermark", None) is not None:
            image = base.watermark.apply_watermark(image)
        images = base.image_processor.postprocess(image, output_type=output_type)
        self.seconds.append(time.perf_counter() - t_start)
        return SimpleNamespace(images=images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> image tensor in [-1, 1]: scaling as in diffusers, `post_quant_conv` in torch, decoder in ORT."""
        vae = self.base.vae
        cfg = vae.config
        if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
            mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1)
            std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1)
            latents = latents * std / cfg.scaling_factor + mean
        else:
            latents = latents / cfg.scaling_factor
        pqc = getattr(vae, "post_quant_conv", None)
        if pqc is not None:
            p = next(pqc.parameters())
            with torch.inference_mode():
                latents = pqc(latents.to(p.device, p.dtype)).float().cpu()
        (image,) = self.sessions["vae_decoder"](latent=_np(latents))
        return torch.from_numpy(image)


def _params(fn: Callable[..., Any]) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def load_onnx_into(model: Model, folder: str | Path, *, variant: str = "qdq", providers: Sequence[str] | None = None,
                   echo: Callable[[str], Any] | None = print) -> Any:
    """Make `model` generate through the ONNX export in `folder` (its pipeline becomes an `OnnxSDXLPipeline`).

    Returns the export's plan as a `Plan` (for an export without a plan: every unit of the run's component in
    `qdq-u8u16`, or `fp16` when that component was exported unquantized).
    """
    from anna.inventory import build_inventory
    from anna.plan import make_plan, plan_from_json

    manifest = read_manifest(folder, variant)
    if manifest.get("model") != model.name:
        raise AnnaError(f"ONNX folder {folder} is an export of model '{manifest.get('model')}', not '{model.name}'")
    if model.pipeline is None:
        raise AnnaError(f"model {model.name} has no pipeline to run the ONNX export with")
    model.pipeline = OnnxSDXLPipeline(model.pipeline, folder, variant, providers)
    component = manifest.get("run_component") or model.default_component
    inventory = build_inventory(model, component)
    if manifest.get("plan"):
        plan = plan_from_json(manifest["plan"], inventory, source=f"ONNX folder {folder}")
    else:
        quantized = manifest["components"].get(component, {}).get("quantized", False)
        plan = make_plan(inventory, {}, default="qdq-u8u16" if quantized else "fp16")
    if echo is not None:
        comps = manifest["components"]
        total = sum(int(comps[c]["bytes"]) for c in comps)
        quant = [c for c in comps if comps[c].get("quantized")]
        echo(f"loaded ONNX export {folder} ({variant}): {', '.join(comps)} on ORT "
             f"{model.pipeline.sessions['unet'].session.get_providers()[0]}; quantized: {', '.join(quant) or 'none'}; "
             f"{total:,} bytes")
    return plan


class OnnxModule:
    """A generic model's export: `run(batch)` feeds the graph's inputs from a dict batch, returns the output."""

    def __init__(self, folder: str | Path, variant: str = "qdq", providers: Sequence[str] | None = None) -> None:
        self.manifest = read_manifest(folder, variant)
        ((name, entry),) = self.manifest["components"].items()
        self.session = OnnxSession(Path(folder) / _file(entry, variant), providers)

    def run(self, batch: Mapping[str, Any]) -> np.ndarray:
        feed = {n: np.ascontiguousarray(batch[n].numpy() if isinstance(batch[n], torch.Tensor) else batch[n])
                for n in self.session.input_names}
        return self.session(**feed)[0]


def is_onnx_checkpoint(path: str | Path) -> bool:
    """The `--checkpoint` dispatch of `anna generate` and `anna evaluate`: an ONNX export folder."""
    return Path(path).is_dir() and is_onnx_folder(path)


def load_onnx_checkpoint_into(model: Model, path: str | Path, echo: Callable[[str], Any] | None = print) -> Any:
    """`load_onnx_into` under the name the `--checkpoint` dispatch looks for."""
    return load_onnx_into(model, path, echo=echo)
