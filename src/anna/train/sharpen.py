"""The `sharpen` stage of tiny-t2i: fine-tune the trained UNet and text encoders through the frozen VAE decoder.

Latent x0 MSE barely sees a circle drawn as a rounded square (the two renders differ in about 80 pixels). Beside the
latent MSE, the predicted latent of part of each batch is decoded and compared with its render in pixels, and with
the scene's *confusers*, the same scene with one shape swapped for another: a hinge on the nearest-render judge's own
criterion (2x2-pooled L2) asks the image to sit nearer its render than each confuser, by a margin.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionXLPipeline
from tqdm.auto import tqdm

from anna.domain import shapes
from anna.train.t2i import TIME_IDS, Log, _lr, encode_text


@dataclass(frozen=True)
class SharpenConfig:
    """Steps, batch, learning rate and loss weights of the sharpen stage."""

    seed: int = 0
    steps: int = 600
    batch: int = 16
    lr: float = 2e-4
    pixel_weight: float = 1.0  # MSE + 0.5 L1 of the decoded prediction against its render
    margin_weight: float = 0.1  # hinge against the confusers (see `confuser_hinge`)
    margin: float = 0.5
    pixel_share: float = 0.5  # share of each batch that is decoded for the pixel terms


def sharpen_timesteps(n: int, gen: torch.Generator) -> torch.Tensor:
    """Half t=999, a quarter t=499 (the steps 1- and 2-step sampling visit), a quarter uniform."""
    u = torch.rand(n, generator=gen)
    t = torch.randint(0, 1000, (n,), generator=gen)
    t = torch.where(u < 0.5, torch.full_like(t, 999), t)
    return torch.where((u >= 0.5) & (u < 0.75), torch.full_like(t, 499), t)


def confusers(scene: shapes.Scene) -> list[shapes.Scene]:
    """The scene with one of its shapes swapped for each other shape (2 per shape)."""
    out = []
    for i, (slot, shape, colour) in enumerate(scene.objects):
        for other in shapes.SHAPES:
            if other != shape:
                objs = list(scene.objects)
                objs[i] = (slot, other, colour)
                out.append(shapes.Scene(scene.background, tuple(objs)))
    return out


@lru_cache(maxsize=8192)
def _pooled_confusers(caption: str) -> torch.Tensor:
    """(4, 3, 32, 32) 2x2-pooled confuser renders in [-1, 1], padded by repeating the first."""
    scenes = confusers(shapes.scene_of(caption))
    scenes += [scenes[0]] * (4 - len(scenes))
    x = torch.from_numpy(np.stack([shapes.render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return F.avg_pool2d(x, 2)


def confuser_hinge(images: torch.Tensor, renders: torch.Tensor, captions: Sequence[str],
                   margin: float) -> torch.Tensor:
    """Mean over images and confusers c of relu(r + margin), r = (|x - t|^2 - |x - c|^2) / |t - c|^2 on 2x2-pooled
    images (x generated, t its render): r is -1 at the render, +1 at the confuser, and the judge wants r < 0."""
    x, t = F.avg_pool2d(images, 2), F.avg_pool2d(renders, 2)
    c = torch.stack([_pooled_confusers(cap) for cap in captions])  # (k, 4, 3, 32, 32)
    d_t = ((x - t) ** 2).flatten(1).sum(1, keepdim=True)
    d_c = ((x[:, None] - c) ** 2).flatten(2).sum(2)
    gap = ((t[:, None] - c) ** 2).flatten(2).sum(2).clamp_min(1e-6)
    return F.relu((d_t - d_c) / gap + margin).mean()


def sharpen_loss(pipe: StableDiffusionXLPipeline, latents: torch.Tensor, images: torch.Tensor, ids: torch.Tensor,
                 captions: Sequence[str], gen: torch.Generator,
                 cfg: SharpenConfig) -> tuple[torch.Tensor, float, float, float]:
    """Latent x0 MSE on the batch, plus on the decoded predictions of its first `pixel_share`: `pixel_weight` x
    (MSE + 0.5 L1) against the renders and `margin_weight` x the confuser hinge. Returns (loss, the three terms)."""
    n = latents.shape[0]
    abar = pipe.scheduler.alphas_cumprod.to(torch.float32)
    t = sharpen_timesteps(n, gen)
    a = abar[t].view(n, 1, 1, 1)
    noise = torch.randn(latents.shape, generator=gen)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    embeds, pooled = encode_text(pipe, ids)
    time_ids = torch.tensor(TIME_IDS).repeat(n, 1)
    pred = pipe.unet(noisy, t, encoder_hidden_states=embeds,
                     added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    lat = F.mse_loss(pred, latents)
    k = max(1, round(n * cfg.pixel_share))
    rec = pipe.vae.decode(pred[:k] / pipe.vae.config.scaling_factor).sample
    pix = F.mse_loss(rec, images[:k]) + 0.5 * F.l1_loss(rec, images[:k])
    hinge = confuser_hinge(rec, images[:k], captions[:k], cfg.margin)
    loss = lat + cfg.pixel_weight * pix + cfg.margin_weight * hinge
    return loss, lat.item(), pix.item(), hinge.item()


def sharpen_unet(pipe: StableDiffusionXLPipeline, latents: torch.Tensor, images: torch.Tensor, ids: torch.Tensor,
                 captions: Sequence[str], cfg: SharpenConfig, log: Log = print,
                 progress: bool = True) -> dict[str, list[float]]:
    """Fine-tune the UNet and both text encoders with `sharpen_loss` on (latent, render, ids, caption) rows; the VAE
    stays frozen (its latents, so the trained UNet, stay valid). Returns each loss term per step."""
    mods = [pipe.unet, pipe.text_encoder, pipe.text_encoder_2]
    params = [p for m in mods for p in m.parameters()]
    for m in mods:
        m.train()
    pipe.vae.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    hist: dict[str, list[float]] = {"loss": [], "latent": [], "pixel": [], "hinge": []}
    t0 = time.time()
    try:
        for step in tqdm(range(cfg.steps), desc="sharpen", disable=not progress):
            idx = torch.randint(0, latents.shape[0], (cfg.batch,), generator=gen)
            loss, *terms = sharpen_loss(pipe, latents[idx], images[idx], ids[idx], [captions[int(i)] for i in idx],
                                        gen, cfg)
            for g in opt.param_groups:
                g["lr"] = _lr(step, cfg.steps, cfg.lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            for key, v in zip(hist, (loss.item(), *terms), strict=True):
                hist[key].append(v)
            if step % 50 == 0 or step == cfg.steps - 1:
                means = " ".join(f"{k} {np.mean(v[-50:]):.5f}" for k, v in hist.items())
                log(f"sharpen step {step} {means} ({time.time() - t0:.0f}s)")
    finally:
        for m in mods:
            m.eval()
        pipe.vae.requires_grad_(True)
    return hist
