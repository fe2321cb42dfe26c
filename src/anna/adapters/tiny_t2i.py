"""`tiny-t2i`: a trained SDXL-architecture pipeline for the shapes domain (`anna.domain.shapes`), shipped with anna.

Same module layout and unit names as `tiny-sdxl` (two CLIP text encoders, the second with projection; a UNet with
the `text_time` added embedding and cross-attention blocks; a 4-level AutoencoderKL), trained on CPU by
`scripts/train_tiny_t2i.py`. The UNet predicts the clean latent (`prediction_type="sample"`) and the Euler scheduler
uses trailing timesteps, so one or two steps without guidance give the captioned image. Its weights are FP16
safetensors in `anna/assets/tiny_t2i/pipeline`, loaded through diffusers with `use_safetensors=True` (never
pickle). The same folder holds the domain's CLIP (`clip/`, a transformers `CLIPModel`) that scores its images offline;
attribute accuracy comes from `anna.domain.nearest`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from anna.adapters.base import GenerationSettings, Model, ModelMetrics, pipeline_components
from anna.errors import AnnaError

NAME = "tiny-t2i"
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "tiny_t2i"
PIPELINE_DIR = ASSETS / "pipeline"
CLIP_DIR = ASSETS / "clip"
MAX_TOKENS = 32
DEFAULTS = GenerationSettings(steps=2, guidance=0.0, height=64, width=64)
# `anna run`'s default selection on tiny-t2i: a checkpoint passes when, at every evaluated steps value, its attribute
# accuracy is at most 0.07 below the original's (1 of the 16 default test images), its CLIP score at most 1.0 below
# and its FID (CLIP image features, the original's images as reference) at most 0.1 above. Scale: FID of the
# original's images against the exact renders of the same prompts is about 0.04, against another 16 prompts about 10.
THRESHOLDS = {"max_accuracy_drop": 0.07, "min_clip_delta": -1.0, "max_fid_increase": 0.1}


def build_tokenizer(words: list[str]) -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer whose merges spell every domain word as one token; other text falls back to
    characters. Built in memory from the word list, no hub."""
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges: list[tuple[str, str]] = []
    for w in words:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            pair = (left, right)
            if pair not in merges:
                merges.append(pair)
            left = left + right
            vocab.setdefault(left, len(vocab))
    for _ in range(8):  # merges of one word can split another: join what is left, at lower rank, until none is
        tok = _make(vocab, merges)
        split = [tok.tokenize(w) for w in words]
        split = [parts for parts in split if len(parts) > 1]
        if not split:
            return tok
        for parts in split:
            left = parts[0]
            for right in parts[1:]:
                if (left, right) not in merges:
                    merges.append((left, right))
                left = left + right
                vocab.setdefault(left, len(vocab))
    raise AssertionError("tokenizer merges did not converge")


def _make(vocab: dict[str, int], merges: list[tuple[str, str]]) -> CLIPTokenizer:
    full = dict(vocab)
    full["<|startoftext|>"] = len(full)
    full["<|endoftext|>"] = len(full)
    return CLIPTokenizer(vocab=full, merges=list(merges), model_max_length=MAX_TOKENS)


def text_config(vocab_size: int, hidden: int, layers: int = 2) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, projection_dim=hidden, hidden_act="gelu",
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )


def build_fresh(words: list[str], seed: int) -> StableDiffusionXLPipeline:
    """The untrained pipeline, seeded: the starting point of training."""
    tokenizer = build_tokenizer(words)
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config(vocab, 32))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(vocab, 32))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32, 32), layers_per_block=2, transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4), cross_attention_dim=64, norm_num_groups=1, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=1, sample_size=64,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        timestep_spacing="trailing", prediction_type="sample",
    )
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=build_tokenizer(words), unet=unet,
                                     scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(folder: str | Path = PIPELINE_DIR) -> StableDiffusionXLPipeline:
    """The shipped pipeline in FP32 (its FP16 safetensors upcast), loaded through safetensors and JSON only."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise AnnaError(f"tiny-t2i weights not found in {folder}: run scripts/train_tiny_t2i.py")
    import warnings

    import diffusers
    import transformers

    levels = diffusers.logging.get_verbosity(), transformers.logging.get_verbosity()
    diffusers.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), torch_dtype=torch.float32,
                                                             use_safetensors=True, low_cpu_mem_usage=False)
    finally:
        diffusers.logging.set_verbosity(levels[0])
        transformers.logging.set_verbosity(levels[1])
        transformers.logging.enable_progress_bar()
        diffusers.utils.logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        m.eval()
    return pipe


def save_pipeline(pipe: StableDiffusionXLPipeline, folder: str | Path = PIPELINE_DIR) -> Path:
    """Save in FP16 safetensors with JSON configs (the pipeline itself is left as it was)."""
    import copy

    half = copy.deepcopy(pipe).to(torch.float16)
    half.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


def load() -> Model:
    pipe = load_pipeline()
    return Model(name=NAME, components=pipeline_components(pipe), pipeline=pipe, defaults=DEFAULTS,
                 metrics=ModelMetrics(clip_model=str(CLIP_DIR), fid_weights=str(CLIP_DIR), judge="shapes-nearest",
                                      thresholds=tuple(THRESHOLDS.items())))
