"""Shared fixtures: the built-in tiny model, the sdxl meta model, and the COCO captions read in place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco2014_val_captions.tsv"


@pytest.fixture(scope="session")
def coco_tsv() -> Path:
    if not COCO.is_file():
        pytest.fail(f"COCO captions not found at {COCO}: the checkout must sit beside shared/")
    return COCO


@pytest.fixture(scope="session")
def sdxl_model():
    from anna.adapters import load_model

    return load_model("sdxl")


@pytest.fixture
def tiny():
    """A fresh tiny-sdxl (tests may modify it in place)."""
    from anna.adapters import load_model

    return load_model("tiny-sdxl")
