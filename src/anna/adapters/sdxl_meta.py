"""`sdxl`: the full SDXL UNet architecture on the meta device, from its published hyperparameters. No weights:
it serves inventory and size planning only."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from anna.adapters.base import GenerationSettings, Model

NAME = "sdxl"

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
SDXL_UNET_CONFIG: dict = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "norm_num_groups": 32,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


# A published SDXL-Turbo study: a buffer of about 0.1% of model size keeps exactly these ten UNet units in FP16,
# everything else in FP8.
PUBLISHED_FP16_UNITS = (
    "conv_in",
    "time_embedding.linear_1",
    "down_blocks.0.downsamplers.0.conv",
    "down_blocks.1.resnets.0.conv_shortcut",
    "up_blocks.1.resnets.2.conv_shortcut",
    "up_blocks.2.resnets.0.conv_shortcut",
    "up_blocks.2.resnets.1.conv_shortcut",
    "up_blocks.2.resnets.2.conv2",
    "up_blocks.2.resnets.2.conv_shortcut",
    "conv_out",
)


def published_plan(default: str = "fp8-moderate") -> dict:
    """The published configuration as a short-form plan: the ten units in FP16, the rest in `default`."""
    return {"default": default, "units": dict.fromkeys(PUBLISHED_FP16_UNITS, "fp16")}


def build_unet() -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_UNET_CONFIG)


def load() -> Model:
    return Model(
        name=NAME,
        components={"unet": build_unet()},
        defaults=GenerationSettings(steps=20, guidance=8.0, height=1024, width=1024),
        has_weights=False,
    )
