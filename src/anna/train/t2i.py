"""Training of `tiny-t2i` on the shapes domain: the VAE on pixel crops, then the UNet and both text encoders on latents.

Pure functions of a seed: on the same torch with one thread the same seed gives the same weights. The UNet learns the
clean latent (x0) from a noised one, with extra weight on the timesteps that 1- and 2-step trailing Euler sampling
visits (999 and 499), so one or two steps without guidance give the captioned image.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionXLPipeline
from tqdm.auto import tqdm

from anna.domain import shapes

Log = Callable[[str], object]
TIME_IDS = (64.0, 64.0, 0.0, 0.0, 64.0, 64.0)  # SDXL micro-conditioning: original size, crop, target size


@dataclass(frozen=True)
class TrainConfig:
    """Steps, batch sizes and learning rates of both stages."""

    seed: int = 0
    vae_steps: int = 1800
    vae_batch: int = 16
    vae_lr: float = 1e-3
    unet_steps: int = 2500
    unet_batch: int = 32
    unet_lr: float = 1e-3


def images_tensor(captions: Sequence[str]) -> torch.Tensor:
    """Rendered captions as an (N, 3, 64, 64) float tensor in [-1, 1]."""
    arr = np.stack([shapes.render_caption(c) for c in captions])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _lr(step: int, total: int, base: float) -> float:
    warm = max(1, total // 50)
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train_vae(pipe: StableDiffusionXLPipeline, images: torch.Tensor, cfg: TrainConfig, log: Log = print,
              progress: bool = True) -> list[float]:
    """Train the AutoencoderKL on random 32x32 crops (8-pixel aligned, so latents line up); sets its scaling factor
    to 1 / std of the full-image latent means. Returns the loss per step."""
    vae = pipe.vae.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    losses = []
    t0 = time.time()
    for step in tqdm(range(cfg.vae_steps), desc="vae", disable=not progress):
        idx = torch.randint(0, images.shape[0], (cfg.vae_batch,), generator=gen)
        ox, oy = (int(v) * 8 for v in torch.randint(0, 5, (2,), generator=gen))
        x = images[idx, :, oy : oy + 32, ox : ox + 32]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-6 * posterior.kl().mean()
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.vae_steps, cfg.vae_lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step} loss {np.mean(losses[-100:]):.5f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        z = encode_latents(pipe, images[:512], scaled=False)
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return losses


@torch.no_grad()
def encode_latents(pipe: StableDiffusionXLPipeline, images: torch.Tensor, scaled: bool = True,
                   batch: int = 64) -> torch.Tensor:
    """Posterior means of images (times the scaling factor when `scaled`)."""
    out = [pipe.vae.encode(images[i : i + batch]).latent_dist.mean for i in range(0, images.shape[0], batch)]
    z = torch.cat(out)
    return z * pipe.vae.config.scaling_factor if scaled else z


def token_ids(pipe: StableDiffusionXLPipeline, captions: Sequence[str]) -> torch.Tensor:
    """Token ids exactly as the pipeline pads and truncates them."""
    tok = pipe.tokenizer
    return tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def encode_text(pipe: StableDiffusionXLPipeline, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, pooled) as `StableDiffusionXLPipeline.encode_prompt` computes them (penultimate layers)."""
    h1 = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    out2 = pipe.text_encoder_2(ids, output_hidden_states=True)
    return torch.cat([h1, out2.hidden_states[-2]], dim=-1), out2.text_embeds


def sample_timesteps(n: int, gen: torch.Generator) -> torch.Tensor:
    """40% t=999 (1 step), 20% t=499 (2nd of 2 steps), 40% uniform."""
    u = torch.rand(n, generator=gen)
    t = torch.randint(0, 1000, (n,), generator=gen)
    t = torch.where(u < 0.4, torch.full_like(t, 999), t)
    return torch.where((u >= 0.4) & (u < 0.6), torch.full_like(t, 499), t)


def unet_loss(pipe: StableDiffusionXLPipeline, latents: torch.Tensor, ids: torch.Tensor,
              gen: torch.Generator) -> torch.Tensor:
    """x0-prediction MSE on one batch."""
    n = latents.shape[0]
    sched = pipe.scheduler
    abar = sched.alphas_cumprod.to(torch.float32)
    t = sample_timesteps(n, gen)
    a = abar[t].view(n, 1, 1, 1)
    noise = torch.randn(latents.shape, generator=gen)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    embeds, pooled = encode_text(pipe, ids)
    time_ids = torch.tensor(TIME_IDS).repeat(n, 1)
    pred = pipe.unet(noisy, t, encoder_hidden_states=embeds,
                     added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    return F.mse_loss(pred, latents)


def train_unet(pipe: StableDiffusionXLPipeline, latents: torch.Tensor, ids: torch.Tensor, cfg: TrainConfig,
               log: Log = print, progress: bool = True) -> list[float]:
    """Train the UNet and both text encoders together on (latent, caption) pairs. Returns the loss per step."""
    mods = [pipe.unet, pipe.text_encoder, pipe.text_encoder_2]
    params = [p for m in mods for p in m.parameters()]
    for m in mods:
        m.train()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    losses = []
    t0 = time.time()
    for step in tqdm(range(cfg.unet_steps), desc="unet", disable=not progress):
        idx = torch.randint(0, latents.shape[0], (cfg.unet_batch,), generator=gen)
        loss = unet_loss(pipe, latents[idx], ids[idx], gen)
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.unet_steps, cfg.unet_lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.unet_steps - 1:
            log(f"unet step {step} loss {np.mean(losses[-100:]):.5f} ({time.time() - t0:.0f}s)")
    for m in mods:
        m.eval()
    return losses


def finetune_decoder(pipe: StableDiffusionXLPipeline, images: torch.Tensor, steps: int, seed: int, lr: float = 5e-4,
                     batch: int = 16, log: Log = print, progress: bool = True) -> list[float]:
    """Sharpen the VAE decoder on full images with the encoder frozen: the latents (and so the trained UNet) stay
    valid. Decodes posterior means plus a little noise, the spread of the UNet's predictions."""
    vae = pipe.vae
    with torch.no_grad():
        means = encode_latents(pipe, images, scaled=False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    gen = torch.Generator().manual_seed(seed + 5)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    vae.decoder.train()
    losses = []
    t0 = time.time()
    for step in tqdm(range(steps), desc="decoder", disable=not progress):
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        z = means[idx] + 0.05 * means.std() * torch.randn(means[idx].shape, generator=gen)
        rec = vae.decode(z).sample
        x = images[idx]
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"decoder step {step} loss {np.mean(losses[-50:]):.5f} ({time.time() - t0:.0f}s)")
    vae.eval()
    return losses
