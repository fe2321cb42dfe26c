"""Fixtures for the evaluation tests: a tiny CLIP in a folder, a TorchScript FID feature extractor, and two real
tiny-sdxl checkpoints made through the options and checkpoint APIs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn


def make_tiny_clip(folder: Path) -> Path:
    """A random-weight CLIP (text + vision) with an offline byte-level tokenizer and a 32-pixel image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from anna.adapters.tiny import _tokenizer

    tok = _tokenizer()
    v = len(tok)
    config = CLIPConfig(
        text_config=dict(vocab_size=v, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=v - 2, eos_token_id=v - 1,
                         pad_token_id=v - 1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


class PooledPixels(nn.Module):
    """A stand-in FID feature extractor: uint8 NCHW images to 2x2 average-pooled pixels (12 features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 2).flatten(1)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def fid_script(tmp_path_factory) -> Path:
    import warnings

    path = tmp_path_factory.mktemp("fid") / "pooled.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(PooledPixels()), str(path))
    return path


def make_checkpoint(out: Path, kinds: tuple[str, ...], option: str = "fp8-absmax", absmax: float = 6.0) -> Path:
    """A tiny-sdxl UNet checkpoint with every unit of `kinds` quantized (hand-made activation ranges)."""
    from anna.adapters import load_model
    from anna.export.checkpoint import save_checkpoint
    from anna.inventory import build_inventory
    from anna.options.apply import apply
    from anna.plan import make_plan
    from anna.stats import ActStats

    model = load_model("tiny-sdxl")
    inv = build_inventory(model, "unet")
    names = [u.name for u in inv.units if u.kind in kinds]
    plan = make_plan(inv, {n: option for n in names}, budget=None, predicted_mse=1e-3 * len(names))
    pct = {str(p): absmax * (p - 50) / 50 for p in (1, 5, 10, 90, 95, 99)}
    stats = {n: {"input": ActStats(min=-absmax, max=absmax, absmax=absmax, percentiles=pct)} for n in names}
    apply(model.component("unet"), plan, stats, echo=None)
    save_checkpoint(model, "unet", plan, out, model_spec="tiny-sdxl", echo=None)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> list[Path]:
    """Two checkpoints: convolutions in FP8 (larger), convolutions and linears in FP8 (smaller)."""
    root = tmp_path_factory.mktemp("ckpts")
    return [make_checkpoint(root / "conv-fp8", ("conv",)),
            make_checkpoint(root / "conv-linear-fp8", ("conv", "linear"))]
