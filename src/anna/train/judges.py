"""Training of the shapes domain's CLIP (a small transformers `CLIPModel`, contrastive), the judge of CLIP score and
FID. It sees only the training prompts, with light noise, blur and shift augmentation so that generated images
(slightly soft, slightly off in colour) are judged like renders. (A learned attribute classifier reached only 0.40 on
held-out renders and was dropped: attribute accuracy is `anna.domain.nearest`.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from anna.domain import shapes
from anna.evaluate.clip_features import OPENAI_MEAN, OPENAI_STD

Log = Callable[[str], object]


@dataclass(frozen=True)
class JudgeConfig:
    seed: int = 0
    clip_steps: int = 1000
    clip_batch: int = 64
    clip_lr: float = 1e-3


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Float images in [-1, 1]: random blur, per-image colour gain, pixel noise and a shift of up to 2 pixels."""
    n = x.shape[0]
    blur = torch.rand(n, 1, 1, 1, generator=gen) < 0.5
    soft = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where(blur, soft, x)
    x = x * (1 + 0.08 * torch.randn(n, 3, 1, 1, generator=gen)) + 0.05 * torch.randn(n, 3, 1, 1, generator=gen)
    x = x + torch.rand(n, 1, 1, 1, generator=gen) * 0.08 * torch.randn(x.shape, generator=gen)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return x.clamp(-1, 1)


def build_clip(tokenizer_words: list[str], seed: int) -> tuple[Any, Any]:
    """A fresh small CLIPModel and its CLIPProcessor (64x64 images, the domain tokenizer)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from anna.adapters.tiny_t2i import MAX_TOKENS, build_tokenizer

    tok = build_tokenizer(tokenizer_words)
    v = len(tok)
    text = {"vocab_size": v, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": MAX_TOKENS, "bos_token_id": v - 2,
            "eos_token_id": v - 1, "pad_token_id": v - 1}
    vision = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": shapes.SIZE, "patch_size": 8}
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    image_processor = CLIPImageProcessor(size={"shortest_edge": shapes.SIZE},
                                         crop_size={"height": shapes.SIZE, "width": shapes.SIZE},
                                         image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tok)


def _pixel_values(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


def _lr(step: int, total: int, base: float) -> float:
    warm = max(1, total // 20)
    return base * min(1.0, (step + 1) / warm) * 0.5 * (1 + np.cos(np.pi * step / total))


def train_clip(images: torch.Tensor, captions: list[str], cfg: JudgeConfig, log: Log = print,
               progress: bool = True) -> tuple[Any, Any, list[float]]:
    model, processor = build_clip(shapes.vocabulary(), cfg.seed)
    ids = processor.tokenizer(captions, padding="max_length", max_length=processor.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt")
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.05)
    model.train()
    losses: list[float] = []
    t0 = time.time()
    for step in tqdm(range(cfg.clip_steps), desc="clip", disable=not progress):
        idx = torch.randperm(images.shape[0], generator=gen)[: cfg.clip_batch]
        out = model(input_ids=ids.input_ids[idx], attention_mask=ids.attention_mask[idx],
                    pixel_values=_pixel_values(augment(images[idx], gen)))
        labels = torch.arange(len(idx))
        loss = (F.cross_entropy(out.logits_per_image, labels) + F.cross_entropy(out.logits_per_text, labels)) / 2
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.clip_steps, cfg.clip_lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.clip_steps - 1:
            log(f"clip step {step} loss {np.mean(losses[-100:]):.4f} ({time.time() - t0:.0f}s)")
    return model.eval(), processor, losses


def train_and_save(out: str | Path, cfg: JudgeConfig, log: Log = print) -> dict[str, Any]:
    """Train the domain CLIP on the training prompts and save it under `out/clip`. Returns a record for
    training.json."""
    from anna.train.t2i import images_tensor

    out = Path(out)
    train_caps = [c for c, _ in shapes.split()[0]]
    images = images_tensor(train_caps)
    t0 = time.time()
    clip, processor, losses = train_clip(images, train_caps, cfg, log=log)
    clip.save_pretrained(str(out / "clip"), safe_serialization=True)
    processor.save_pretrained(str(out / "clip"))
    return {"config": asdict(cfg), "clip_seconds": round(time.time() - t0, 1),
            "clip_final_loss": float(np.mean(losses[-100:]))}
