"""What every model adapter gives the later stages: named components and, for pipelines, the pipeline itself."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from anna.errors import AnnaError

PIPELINE_COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "vae_decoder")


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings of a pipeline run: the model's defaults, overridable per command."""

    steps: int
    guidance: float
    height: int
    width: int


@dataclass(frozen=True)
class ModelMetrics:
    """A built-in model's own offline quality kit: the CLIP folder for CLIP score and FID features, the attribute
    judge, and the selection thresholds that keep its quality (used when the user gives none)."""

    clip_model: str | None = None
    fid_weights: str | None = None
    judge: str | None = None
    thresholds: tuple[tuple[str, float], ...] = ()


@dataclass
class Model:
    """A loaded model: its components by name, plus how to run it.

    For diffusion pipelines `pipeline` is set and the components are `unet`, `text_encoder`, `text_encoder_2`
    and `vae_decoder`. For a generic module, the one component is `model`; `batches` and `forward` say how to run it.
    """

    name: str
    components: dict[str, nn.Module]
    pipeline: Any = None
    defaults: GenerationSettings | None = None
    has_weights: bool = True
    batches: Iterable[Any] | None = None
    forward: Callable[[nn.Module, Any], torch.Tensor] | None = None
    metrics: ModelMetrics = ModelMetrics()

    @property
    def default_component(self) -> str:
        return "unet" if "unet" in self.components else next(iter(self.components))

    def component(self, name: str | None = None) -> nn.Module:
        """The component module, with a clear error for an unknown name."""
        name = name or self.default_component
        if name not in self.components:
            known = ", ".join(self.components)
            raise AnnaError(f"unknown component '{name}' for model {self.name}; choose one of {known}")
        return self.components[name]

    def require_weights(self, stage: str) -> None:
        """Stages that run the model call this: a weightless (meta) model says so in one line."""
        if not self.has_weights:
            raise AnnaError(
                f"model '{self.name}' has no weights (meta device); '{stage}' needs weights. "
                "Use a hub id, a local diffusers folder or tiny-sdxl."
            )

    def component_output(self, component: str, out: Any) -> torch.Tensor:
        """The tensor of a component's output that the rest of the pipeline consumes, flattened per sample."""
        return component_output(component, out)


def component_output(component: str, out: Any) -> torch.Tensor:
    """Pick the consumed output: UNet `.sample`; text encoders the penultimate hidden state (what SDXL reads) plus
    the pooled/projected embedding when there is one; VAE decoder its image tensor; anything else the first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if component in ("text_encoder", "text_encoder_2") and getattr(out, "hidden_states", None) is not None:
        parts = [out.hidden_states[-2].flatten(1)]
        pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            parts.append(pooled.flatten(1))
        return torch.cat(parts, dim=1)
    for key in ("sample", "last_hidden_state", "text_embeds"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise AnnaError(f"cannot find an output tensor of component '{component}' (got {type(out).__name__})")


def pipeline_components(pipe: Any) -> dict[str, nn.Module]:
    """The four quantizable components of an SDXL pipeline, by anna's names."""
    comps: dict[str, nn.Module] = {"unet": pipe.unet}
    if getattr(pipe, "text_encoder", None) is not None:
        comps["text_encoder"] = pipe.text_encoder
    if getattr(pipe, "text_encoder_2", None) is not None:
        comps["text_encoder_2"] = pipe.text_encoder_2
    comps["vae_decoder"] = pipe.vae.decoder
    return comps
