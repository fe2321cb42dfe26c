"""One tiny-sdxl UNet calibration shared by the calibration tests, with what the pipeline computed captured."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from anna.adapters import GenerationSettings, Model, load_model
from anna.prompts import load_prompts

SETTINGS = GenerationSettings(steps=3, guidance=5.0, height=64, width=64)


@dataclass
class UnetRun:
    model: Model
    run_dir: Path
    prompts: list[str]
    settings: GenerationSettings
    outputs: list[torch.Tensor] = field(default_factory=list)  # UNet output per call, in call order
    conv_in_inputs: list[torch.Tensor] = field(default_factory=list)


@pytest.fixture(scope="module")
def tiny_model() -> Model:
    """One tiny-sdxl per test module (calibration removes its hooks; tests remove theirs)."""
    return load_model("tiny-sdxl")


@pytest.fixture(scope="module")
def prompts(coco_tsv: Path) -> list[str]:
    return load_prompts(f"{coco_tsv}:1-3")


@pytest.fixture(scope="module")
def unet_run(tiny_model: Model, prompts: list[str], tmp_path_factory: pytest.TempPathFactory) -> UnetRun:
    """Calibrate the UNet (3 prompts x 3 steps) while recording every UNet output and every conv_in input."""
    from anna.calibrate import calibrate

    run = UnetRun(tiny_model, tmp_path_factory.mktemp("unet-run"), prompts, SETTINGS)
    unet = tiny_model.pipeline.unet
    handles = [
        unet.register_forward_hook(lambda m, a, out: run.outputs.append(out[0].clone())),
        unet.conv_in.register_forward_pre_hook(lambda m, a: run.conv_in_inputs.append(a[0].clone())),
    ]
    try:
        calibrate(tiny_model, run.run_dir, prompts=prompts, settings=SETTINGS, seed=3, progress=False)
    finally:
        for h in handles:
            h.remove()
    return run
