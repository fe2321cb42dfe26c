"""Training of the shapes domain's judges: a small CLIP (transformers `CLIPModel`, contrastive) and the attribute
classifier (`anna.domain.judge`). Both see only the training prompts, with light noise, blur and shift augmentation
so that generated images (slightly soft, slightly off in colour) are judged like renders."""

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

from anna.domain import judge, shapes
from anna.evaluate.clip_features import OPENAI_MEAN, OPENAI_STD

Log = Callable[[str], object]


@dataclass(frozen=True)
class JudgeConfig:
    seed: int = 0
    clip_steps: int = 1000
    clip_batch: int = 64
    clip_lr: float = 1e-3
    judge_steps: int = 800
    judge_batch: int = 64
    judge_lr: float = 2e-3


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


def train_judge(images: torch.Tensor, captions: list[str], cfg: JudgeConfig, log: Log = print,
                progress: bool = True, decoded: torch.Tensor | None = None
                ) -> tuple[judge.AttributeClassifier, list[float]]:
    """`decoded`: the same images through the pipeline's autoencoder; half of each batch then comes from them, so the
    judge reads soft, autoencoded shapes as well as crisp renders."""
    torch.manual_seed(cfg.seed + 3)
    model = judge.AttributeClassifier()
    target = judge.targets([shapes.scene_of(c) for c in captions])
    gen = torch.Generator().manual_seed(cfg.seed + 4)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.judge_lr, weight_decay=0.01)
    losses: list[float] = []
    t0 = time.time()
    model.train()
    for step in tqdm(range(cfg.judge_steps), desc="judge", disable=not progress):
        idx = torch.randint(0, images.shape[0], (cfg.judge_batch,), generator=gen)
        x = images[idx]
        if decoded is not None:
            x = torch.cat([x[: len(idx) // 2], decoded[idx[len(idx) // 2 :]]])
        loss = judge.loss_of(model(augment(x, gen)), target[idx])
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.judge_steps, cfg.judge_lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.judge_steps - 1:
            log(f"judge step {step} loss {np.mean(losses[-100:]):.4f} ({time.time() - t0:.0f}s)")
    return model.eval(), losses


@torch.no_grad()
def autoencode(pipeline_dir: Path, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Images through the saved pipeline's VAE (posterior mean, then decode), in [-1, 1]."""
    from anna.adapters.tiny_t2i import load_pipeline

    vae = load_pipeline(pipeline_dir).vae
    return torch.cat([vae.decode(vae.encode(images[i : i + batch]).latent_dist.mean).sample.clamp(-1, 1)
                      for i in range(0, images.shape[0], batch)])


def train_and_save(out: str | Path, cfg: JudgeConfig, log: Log = print,
                   parts: tuple[str, ...] = ("judge", "clip")) -> dict[str, Any]:
    """Train the judges on the training prompts (the classifier also on their autoencoded images, through
    `out/pipeline`), save them under `out/judge` and `out/clip`, and measure the classifier on the held-out renders
    and their autoencoded images. Returns a record for training.json."""
    from anna.train.t2i import images_tensor

    out = Path(out)
    train_caps = [c for c, _ in shapes.split()[0]]
    held_caps = [c for c, _ in shapes.split()[1]]
    images = images_tensor(train_caps)
    record: dict[str, Any] = {"config": asdict(cfg)}
    if "judge" in parts:
        t0 = time.time()
        clf, judge_losses = train_judge(images, train_caps, cfg, log=log,
                                        decoded=autoencode(out / "pipeline", images))
        judge.save(clf, out / "judge")
        held = images_tensor(held_caps)
        clf = judge.load(out / "judge")
        for name, x in (("renders", held), ("autoencoded", autoencode(out / "pipeline", held))):
            arr = ((x + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
            record[f"judge_heldout_{name}_accuracy"] = judge.accuracy(clf, list(arr), held_caps)
            log(f"judge accuracy on held-out {name}: {record[f'judge_heldout_{name}_accuracy']:.4f}")
        record |= {"judge_seconds": round(time.time() - t0, 1), "judge_final_loss": float(np.mean(judge_losses[-100:]))}
    if "clip" in parts:
        t1 = time.time()
        clip, processor, clip_losses = train_clip(images, train_caps, cfg, log=log)
        clip.save_pretrained(str(out / "clip"), safe_serialization=True)
        processor.save_pretrained(str(out / "clip"))
        record |= {"clip_seconds": round(time.time() - t1, 1), "clip_final_loss": float(np.mean(clip_losses[-100:]))}
    return record
