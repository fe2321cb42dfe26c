"""Train anna's built-in `tiny-t2i` pipeline and its domain CLIP on the shapes domain.

    OMP_NUM_THREADS=1 python scripts/train_tiny_t2i.py [--stage all|pipeline|decoder|sharpen|clip] [--seed 0]
        [--out DIR]

Stages: `pipeline` (VAE, then UNet and both text encoders on its latents), `decoder` (the VAE decoder sharpened
with the encoder frozen, from the saved pipeline), `sharpen` (the saved UNet and text encoders fine-tuned with a
pixel loss through the frozen VAE decoder beside the latent MSE, so that circles come out round) and `clip` (the
domain CLIP, contrastive). Writes FP16 safetensors and JSON into `src/anna/assets/tiny_t2i/` (or --out):
`pipeline/` (a diffusers StableDiffusionXLPipeline folder), `clip/` (a transformers CLIPModel folder), plus
`training.json` with the seed, steps, config, losses and wall time of each stage. One thread: on the same torch the
same seed gives the same weights. Shipped weights: seed 0 and the default steps (`TrainConfig`, `--decoder-steps`,
`SharpenConfig`, `JudgeConfig`), the stages run one after another as `--stage pipeline`, `--stage decoder`,
`--stage sharpen`, then `--stage clip` (`--stage all` runs the four in that order).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    from anna.adapters import tiny_t2i
    from anna.domain import shapes
    from anna.train import sharpen, t2i

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("all", "pipeline", "decoder", "sharpen", "clip"), default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(tiny_t2i.ASSETS))
    ap.add_argument("--vae-steps", type=int, default=t2i.TrainConfig.vae_steps)
    ap.add_argument("--unet-steps", type=int, default=t2i.TrainConfig.unet_steps)
    ap.add_argument("--decoder-steps", type=int, default=300)
    ap.add_argument("--sharpen-steps", type=int, default=sharpen.SharpenConfig.steps)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "training.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}

    def log(s: str) -> None:
        print(s, flush=True)

    train_caps = [c for c, _ in shapes.split()[0]]
    record["torch"] = torch.__version__
    record["train_prompts"] = len(train_caps)
    if args.stage in ("all", "pipeline"):
        cfg = t2i.TrainConfig(seed=args.seed, vae_steps=args.vae_steps, unet_steps=args.unet_steps)
        t0 = time.time()
        pipe = tiny_t2i.build_fresh(shapes.vocabulary(), args.seed)
        images = t2i.images_tensor(train_caps)
        vae_losses = t2i.train_vae(pipe, images, cfg, log=log)
        t1 = time.time()
        log(f"vae done in {t1 - t0:.0f}s, scaling factor {pipe.vae.config.scaling_factor:.4f}")
        latents = t2i.encode_latents(pipe, images)
        ids = t2i.token_ids(pipe, train_caps)
        unet_losses = t2i.train_unet(pipe, latents, ids, cfg, log=log)
        t2 = time.time()
        tiny_t2i.save_pipeline(pipe, out / "pipeline")
        record["pipeline"] = {"seed": args.seed, "config": cfg.__dict__, "vae_seconds": round(t1 - t0, 1),
                              "unet_seconds": round(t2 - t1, 1), "vae_final_loss": sum(vae_losses[-100:]) / 100,
                              "unet_final_loss": sum(unet_losses[-100:]) / 100}
        record_path.write_text(json.dumps(record, indent=1))
        log(f"pipeline done in {t2 - t0:.0f}s")
    if args.stage in ("all", "decoder"):  # from the saved FP16 pipeline, as shipped
        t0 = time.time()
        pipe = tiny_t2i.load_pipeline(out / "pipeline")
        losses = t2i.finetune_decoder(pipe, t2i.images_tensor(train_caps), args.decoder_steps, args.seed, log=log)
        tiny_t2i.save_pipeline(pipe, out / "pipeline")
        record["decoder"] = {"seed": args.seed, "steps": args.decoder_steps, "seconds": round(time.time() - t0, 1),
                             "final_loss": sum(losses[-50:]) / 50}
        record_path.write_text(json.dumps(record, indent=1))
        log(f"decoder done in {time.time() - t0:.0f}s")
    if args.stage in ("all", "sharpen"):  # from the saved FP16 pipeline, as shipped
        t0 = time.time()
        pipe = tiny_t2i.load_pipeline(out / "pipeline")
        cfg_s = sharpen.SharpenConfig(seed=args.seed, steps=args.sharpen_steps)
        images = t2i.images_tensor(train_caps)
        hist = sharpen.sharpen_unet(pipe, t2i.encode_latents(pipe, images), images, t2i.token_ids(pipe, train_caps),
                                    train_caps, cfg_s, log=log)
        tiny_t2i.save_pipeline(pipe, out / "pipeline")
        tail = max(1, min(50, cfg_s.steps))
        record["sharpen"] = {"seed": args.seed, "config": cfg_s.__dict__, "seconds": round(time.time() - t0, 1),
                             **{f"first_{k}": sum(v[:tail]) / tail for k, v in hist.items()},
                             **{f"final_{k}": sum(v[-tail:]) / tail for k, v in hist.items()}}
        record_path.write_text(json.dumps(record, indent=1))
        log(f"sharpen done in {time.time() - t0:.0f}s")
    if args.stage in ("all", "clip"):
        from anna.train import judges

        t0 = time.time()
        record["clip"] = judges.train_and_save(out, judges.JudgeConfig(seed=args.seed), log=log)
        record_path.write_text(json.dumps(record, indent=1))
        log(f"clip done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
