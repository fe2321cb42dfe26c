"""How calibration runs a model, item by item: a diffusion pipeline prompt by prompt, or a generic model batch by batch.

A driver also captures the component's inputs for the cache (a forward pre-hook on the component for pipelines,
the batch itself for generic models) and ticks the progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from anna.adapters.base import PIPELINE_COMPONENTS, GenerationSettings, Model
from anna.calibrate.cache import InputCache
from anna.calibrate.resume import data_fingerprint
from anna.calibrate.tree import flatten
from anna.errors import AnnaError

Tick = Callable[[int], None]


class _StopPipeline(Exception):
    """Raised from the UNet's pre-hook when the text encoders (all that was wanted) have run."""


class PipelineDriver:
    """Runs the pipeline once per prompt with `seed + i` (a CPU generator), as `anna generate` does."""

    kind = "pipeline"

    def __init__(
        self,
        model: Model,
        component: str,
        prompts: Sequence[str] | None,
        settings: GenerationSettings | None,
        seed: int,
    ) -> None:
        if component not in PIPELINE_COMPONENTS:
            raise AnnaError(f"component '{component}' is not a pipeline component ({', '.join(PIPELINE_COMPONENTS)})")
        if not prompts:
            raise AnnaError("calibrating a pipeline needs at least one prompt")
        settings = settings or model.defaults
        if settings is None:
            raise AnnaError(f"model {model.name} has no default generation settings; pass settings")
        if settings.steps < 1 or settings.height < 8 or settings.width < 8:
            raise AnnaError(f"bad generation settings {settings}: steps >= 1, height and width >= 8")
        self.model, self.component, self.prompts = model, component, list(prompts)
        self.settings, self.seed = settings, seed
        self.module = model.component(component)
        self.text_only = component in ("text_encoder", "text_encoder_2")
        self.n_items = len(self.prompts)
        self.calls_per_item = settings.steps if component == "unet" else 1
        self.ticks_per_item = 1 if self.text_only else settings.steps
        self.tick_unit = "prompt" if self.text_only else "step"
        self._item = 0
        self._call = 0

    def record(self) -> dict[str, Any]:
        """What run.json says about the data and settings."""
        return {"settings": asdict(self.settings), "seed": self.seed, "prompts": self.prompts}

    def fingerprint(self) -> str:
        return ""

    @contextmanager
    def capturing(self, cache: InputCache) -> Iterator[None]:
        """Count the component's calls per prompt and keep the planned ones' (args, kwargs)."""

        def pre(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            call = self._call
            self._call += 1
            if cache.wants(self._item, call):
                cache.add(self._item, call, (list(args), dict(kwargs)))

        def stop(module: nn.Module, args: tuple) -> None:
            raise _StopPipeline

        handles = [self.module.register_forward_pre_hook(pre, with_kwargs=True)]
        try:
            if self.text_only:
                handles.append(self.model.pipeline.unet.register_forward_pre_hook(stop))
            yield
        finally:
            for h in handles:
                h.remove()

    def run_item(self, i: int, tick: Tick) -> None:
        """One prompt through the pipeline (up to the UNet for text encoders, without the VAE for the UNet)."""
        self._item, self._call = i, 0
        s = self.settings

        def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            tick(1)
            return callback_kwargs

        try:
            with torch.inference_mode():
                self.model.pipeline(
                    prompt=self.prompts[i],
                    num_inference_steps=s.steps,
                    guidance_scale=s.guidance,
                    height=s.height,
                    width=s.width,
                    generator=torch.Generator("cpu").manual_seed(self.seed + i),
                    output_type="pt" if self.component == "vae_decoder" else "latent",
                    callback_on_step_end=None if self.text_only else on_step_end,
                )
        except _StopPipeline:
            tick(1)
        if self._call == 0:
            raise AnnaError(f"the pipeline never called component '{self.component}' for prompt {i}")


class BatchDriver:
    """Runs a generic model's `forward(module, batch)` over `model.batches`; the cached inputs are the batches."""

    kind = "batches"
    ticks_per_item = 1
    calls_per_item = 1
    tick_unit = "batch"

    def __init__(self, model: Model, component: str, prompts: Sequence[str] | None) -> None:
        if prompts:
            raise AnnaError(f"model {model.name} is a generic module: it runs its own batches, prompts do not apply")
        if model.forward is None or model.batches is None:
            raise AnnaError(f"model {model.name} has no batches or forward function to calibrate with")
        self.model, self.module = model, model.component(component)
        self.batches = list(model.batches)
        if not self.batches:
            raise AnnaError(f"model {model.name} has no batches to calibrate with")
        self.n_items = len(self.batches)
        self._cache: InputCache | None = None

    def record(self) -> dict[str, Any]:
        return {"settings": None, "seed": None, "prompts": [], "batches": self.n_items}

    def fingerprint(self) -> str:
        tensors = [t for i, b in enumerate(self.batches) for t in flatten(b, f"b{i}")[1].values()]
        return data_fingerprint(tensors)

    @contextmanager
    def capturing(self, cache: InputCache) -> Iterator[None]:
        self._cache = cache
        try:
            yield
        finally:
            self._cache = None

    def run_item(self, i: int, tick: Tick) -> None:
        batch = self.batches[i]
        if self._cache is not None and self._cache.wants(i, 0):
            self._cache.add(i, 0, batch)
        with torch.inference_mode():
            self.model.forward(self.module, batch)
        tick(1)
