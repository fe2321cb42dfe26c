"""The shipped tiny-t2i pipeline and judges: safetensors/JSON only, FP16, small; draws held-out prompts; anna run on it
reports CLIP score, FID and attribute accuracy for every checkpoint."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from anna.adapters import load_model, tiny_t2i
from anna.domain import nearest, shapes
from anna.evaluate.clip_features import ClipImageFeatures
from anna.evaluate.metrics import ClipScorer, FidScorer
from anna.generate import generate_images


def test_assets_are_fp16_safetensors_and_json_only():
    files = [p for p in tiny_t2i.ASSETS.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".txt"}
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert len(weights) == 5  # unet, vae, two text encoders, clip
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    for p in (tiny_t2i.PIPELINE_DIR / "unet").glob("*.safetensors"):
        with safe_open(str(p), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118


def test_loads_without_unpickling(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    model = load_model("tiny-t2i")
    assert model.defaults == tiny_t2i.DEFAULTS
    assert set(model.components) == {"unet", "text_encoder", "text_encoder_2", "vae_decoder"}
    assert next(model.pipeline.unet.parameters()).dtype == torch.float32
    assert model.pipeline.unet.config.addition_embed_type == "text_time"
    ClipImageFeatures.from_folder(tiny_t2i.CLIP_DIR)


def test_unit_names_match_tiny_sdxl():
    """Same module layout and unit names as tiny-sdxl; only widths differ, and where the VAE decoder's width changes
    between blocks its resnet has the 1x1 `conv_shortcut` that SDXL's VAE decoder has too."""
    def names(model):
        return {c: [n for n, _ in m.named_modules()] for c, m in model.components.items()}

    ours, theirs = names(load_model("tiny-t2i")), names(load_model("tiny-sdxl"))
    for comp in ("unet", "text_encoder", "text_encoder_2"):
        assert ours[comp] == theirs[comp]
    extra = [n for n in ours["vae_decoder"] if n not in theirs["vae_decoder"]]
    assert [n for n in ours["vae_decoder"] if n not in extra] == theirs["vae_decoder"]
    assert extra and all(n.endswith("conv_shortcut") for n in extra)


@pytest.mark.slow  # builds the nearest-render bank: 5,490 renders
def test_draws_held_out_prompts():
    model = load_model("tiny-t2i")
    prompts = shapes.held_out_prompts(6)
    images = generate_images(model, prompts, replace(tiny_t2i.DEFAULTS, steps=2), seed=0, progress=False)
    # every shape, colour, place and background right in each image (circles round since the sharpen stage)
    assert nearest.correct(images, prompts) == [True] * 6
    renders = [shapes.render_caption(p) for p in shapes.held_out_prompts(30)]
    assert nearest.accuracy(renders, shapes.held_out_prompts(30)) == 1.0
    clip = ClipScorer(str(tiny_t2i.CLIP_DIR), device="cpu")
    matched = clip.scores(images, prompts)
    shuffled = clip.scores(images, prompts[1:] + prompts[:1])
    assert sum(m > s for m, s in zip(matched, shuffled, strict=True)) >= 5
    fid = FidScorer(ClipImageFeatures.from_folder(tiny_t2i.CLIP_DIR), device="cpu")
    renders = [shapes.render_caption(p) for p in prompts]
    fid.set_reference(renders)
    assert fid.score(renders) == pytest.approx(0.0, abs=1e-3)
    assert fid.score(images) < fid.score([shapes.render_caption(p) for p in shapes.held_out_prompts(12)[6:]])


@pytest.mark.slow
def test_run_reports_clip_fid_and_accuracy(tmp_path):
    from anna.run import ALL_FP8, RunConfig, run_all

    cfg = RunConfig(run_dir=str(tmp_path / "run"), calib=2, test=4, sizes=(0.56,), steps=(1,), validate=2)
    lines: list[str] = []
    report = run_all(cfg, echo=lines.append, progress=False)
    assert report.is_file()
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["model"] == "tiny-t2i" and metrics["clip_model"] == str(tiny_t2i.CLIP_DIR)
    assert metrics["prompt_texts"] == shapes.held_out_prompts(204)[200:]  # never the bench's 200
    rows = metrics["original"] + metrics["entries"]
    assert {e["name"] for e in metrics["entries"]} == {"size-0.560", ALL_FP8}
    for row in rows:
        assert row["clip"] is not None and row["clip"] > 0
        assert row["fid"] is not None and row["accuracy"] is not None
        assert len(row["accuracy_per_image"]) == 4
    chosen = [s for s in lines if s.startswith(("selected ", "no selection"))]
    assert len(chosen) == 1 and "accuracy" in chosen[0]  # judged on tiny-t2i's own thresholds
    if chosen[0].startswith("selected "):
        selected = json.loads((tmp_path / "run" / "selected.json").read_text())
        assert selected["thresholds"] == {**tiny_t2i.THRESHOLDS, "max_mse": None}


def test_evaluate_scores_with_the_domain_clip_by_default(tmp_path):
    from click.testing import CliRunner

    from anna.cli import cli

    texts = shapes.held_out_prompts(4)[2:]
    (tmp_path / "p.txt").write_text("\n".join(texts) + "\n")
    r = CliRunner().invoke(cli, ["evaluate", "--model", "tiny-t2i", "--prompts", str(tmp_path / "p.txt"),
                                 "--steps", "1", "--metrics", "clip", "--out", str(tmp_path / "ev"), "-q"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["clip_model"] == str(tiny_t2i.CLIP_DIR)  # offline, no hub download
    images = generate_images(load_model("tiny-t2i"), texts, replace(tiny_t2i.DEFAULTS, steps=1), seed=0, progress=False)
    want = ClipScorer(str(tiny_t2i.CLIP_DIR), device="cpu").score(images, texts)
    assert metrics["original"][0]["clip"] == pytest.approx(want, rel=1e-4)
