"""The metrics against independent computations: image MSE on known arrays, FID against the closed form for Gaussians
(sample and population), CLIP score against a cosine computed by hand, and null + reason when weights are missing."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch import nn

from anna.errors import AnnaError
from anna.evaluate.metrics import (
    ClipScorer,
    FidScorer,
    MetricUnavailable,
    fid_feature_extractor,
    image_mse,
    images_mse,
    load_clip,
)

# Image MSE


def test_image_mse_known_arrays():
    a = np.zeros((4, 5, 3), np.uint8)
    b = np.full((4, 5, 3), 10, np.uint8)
    assert image_mse(a, b) == 100.0
    c = a.copy()
    c[0, 0, 0] = 255  # one value of 60 differs by 255
    assert image_mse(a, c) == pytest.approx(255**2 / 60)
    # PIL images and CHW uint8 tensors give the same number; no uint8 wrap-around
    assert image_mse(Image.fromarray(b), Image.fromarray(a)) == 100.0
    assert image_mse(torch.from_numpy(c).permute(2, 0, 1), torch.from_numpy(a).permute(2, 0, 1)) == image_mse(a, c)
    assert images_mse([a, a], [b, c]) == [100.0, pytest.approx(255**2 / 60)]


def test_image_mse_rejects_mismatches():
    with pytest.raises(AnnaError, match="shapes"):
        image_mse(np.zeros((4, 5, 3), np.uint8), np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(AnnaError, match="2 images with 1"):
        images_mse([np.zeros((2, 2, 3), np.uint8)] * 2, [np.zeros((2, 2, 3), np.uint8)])


# FID


class Identity(nn.Module):
    """Feature extractor for precomputed feature vectors."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.num_features = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def closed_form_fid(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(covmean)))


def gaussian(rng, d: int, shift: float, scale: float):
    a = rng.normal(size=(d, d))
    return shift * rng.normal(size=d), scale * (a @ a.T / d + 0.5 * np.eye(d))


def test_fid_equals_closed_form_on_the_same_samples():
    rng = np.random.default_rng(0)
    d, n = 6, 3000
    mu1, s1 = gaussian(rng, d, 0.0, 1.0)
    mu2, s2 = gaussian(rng, d, 0.7, 1.5)
    x = rng.multivariate_normal(mu1, s1, size=n)
    y = rng.multivariate_normal(mu2, s2, size=n + 500)
    scorer = FidScorer(Identity(d), device="cpu")
    scorer.set_reference(torch.from_numpy(x))
    got = scorer.score(torch.from_numpy(y))
    want = closed_form_fid(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert got == pytest.approx(want, rel=1e-6)
    # the reference survives scoring; scoring again gives the same value
    assert scorer.score(torch.from_numpy(y)) == pytest.approx(got, rel=1e-12)
    assert scorer.score(torch.from_numpy(x)) == pytest.approx(0.0, abs=1e-6)


def test_fid_converges_to_the_population_value():
    rng = np.random.default_rng(1)
    d, n = 4, 40000
    mu1, s1 = gaussian(rng, d, 0.0, 1.0)
    mu2, s2 = gaussian(rng, d, 0.5, 2.0)
    population = closed_form_fid(mu1, s1, mu2, s2)
    scorer = FidScorer(Identity(d), device="cpu")
    scorer.set_reference(torch.from_numpy(rng.multivariate_normal(mu1, s1, size=n)))
    got = scorer.score(torch.from_numpy(rng.multivariate_normal(mu2, s2, size=n)))
    assert population > 1.0
    assert got == pytest.approx(population, rel=0.03)


def test_fid_needs_two_images_per_set():
    scorer = FidScorer(Identity(3), device="cpu")
    scorer.set_reference(torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(MetricUnavailable, match="at least 2"):
        scorer.score(torch.randn(1, 3, dtype=torch.float64))


def test_torchscript_feature_extractor(fid_script):
    feature, desc = fid_feature_extractor(str(fid_script))
    assert feature.num_features == 12 and str(fid_script) in desc
    rng = np.random.default_rng(2)
    ref = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(4)]
    other = [np.clip(im.astype(int) + 60, 0, 255).astype(np.uint8) for im in ref]
    scorer = FidScorer(feature, device="cpu")
    scorer.set_reference([Image.fromarray(im) for im in ref])
    assert scorer.score([Image.fromarray(im) for im in ref]) == pytest.approx(0.0, abs=1e-5)
    assert scorer.score([Image.fromarray(im) for im in other]) > 0.01


def test_fid_unavailable_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # nothing cached
    with pytest.raises(MetricUnavailable) as e:
        fid_feature_extractor(None)
    assert "\n" not in str(e.value) and "--fid-weights" in str(e.value)
    with pytest.raises(MetricUnavailable, match="not found"):
        fid_feature_extractor(str(tmp_path / "missing.pt"))


# CLIP score


def test_clip_score_equals_hand_cosine(tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    scorer = ClipScorer(str(tiny_clip), device="cpu")
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 40, 48), generator=g, dtype=torch.uint8) for _ in range(8)]
    prompts = ["a red cat", "a city at night", "fruit", "a bus", "two dogs", "sky", "a clock tower", "boats"]
    got = scorer.scores(images, prompts)

    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    want = []
    with torch.no_grad():
        for image, prompt in zip(images, prompts, strict=True):
            pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
            img = model.get_image_features(pixel_values=pixels)
            img = img if isinstance(img, torch.Tensor) else img.pooler_output
            tok = processor(text=[prompt], return_tensors="pt", padding=True)
            txt = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
            cos = float(torch.nn.functional.cosine_similarity(img, txt).item())
            want.append(100 * max(cos, 0.0))
    assert got == pytest.approx(want, abs=1e-4)
    assert any(w > 1.0 for w in want) and any(w == 0.0 for w in want)  # both branches of max(cos, 0) seen
    assert scorer.score(images, prompts) == pytest.approx(np.mean(want), abs=1e-4)


def test_clip_unavailable_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MetricUnavailable) as e:
        load_clip("anna-tests/no-such-clip")
    msg = str(e.value)
    assert "\n" not in msg and "offline" in msg and "--clip-model" in msg
    with pytest.raises(MetricUnavailable, match="folder not found"):
        load_clip(str(tmp_path / "nope" / "clip"))


def test_reference_folder_empty_or_wrong_size(tmp_path):
    from PIL import Image

    from anna.errors import AnnaError
    from anna.evaluate.metrics import load_reference_folder

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AnnaError, match="no images"):
        load_reference_folder(empty, (64, 64))
    one = tmp_path / "one"
    one.mkdir()
    Image.new("RGB", (64, 64)).save(one / "a.png")
    with pytest.raises(AnnaError, match="at least 2"):
        load_reference_folder(one, (64, 64))
    Image.new("RGB", (32, 48)).save(one / "b.png")
    with pytest.raises(AnnaError, match="size 32x48.*64x64"):
        load_reference_folder(one, (64, 64))
    Image.new("RGB", (64, 64)).save(one / "b.png")
    assert len(load_reference_folder(one, (64, 64))) == 2
