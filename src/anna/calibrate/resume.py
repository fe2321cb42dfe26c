"""Resuming: the run's identity hash, and the atomic progress checkpoint of an unfinished run.

The progress file is one safetensors file (histogram states `hist/...`, cached inputs under `cache/`) whose metadata
holds the run hash, the number of finished items and the JSON bookkeeping; one atomic rename makes it current.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from anna.artifacts import write_tensors

CACHE_PREFIX = "cache/"


def module_fingerprint(module: nn.Module) -> str:
    """A cheap digest of a module: every parameter and buffer's name, shape, dtype and first few values."""
    h = hashlib.sha256()
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.device.type != "meta" and t.numel():
            h.update(t.detach().reshape(-1)[:16].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def data_fingerprint(tensors: Iterable[Tensor]) -> str:
    """A digest of tensors' contents (e.g. a generic model's batches)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run_hash(config: dict[str, Any]) -> str:
    """The identity of a run: a digest of everything that changes its results."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Progress:
    """A loaded checkpoint: finished items, the tensors, and the JSON bookkeeping."""

    finished: int
    tensors: dict[str, Tensor]
    meta: dict[str, Any]


def save_progress(path: Path, run_id: str, finished: int, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write the checkpoint atomically."""
    info = {"run_hash": run_id, "finished": str(finished), "meta": json.dumps(meta)}
    write_tensors(path, tensors, metadata=info)


def load_progress(path: Path, run_id: str) -> tuple[Progress | None, str]:
    """The checkpoint for this run, or None with the reason it cannot be used ("" when there is none)."""
    if not path.is_file():
        return None, ""
    try:
        with safe_open(str(path), framework="pt") as f:
            info = f.metadata() or {}
            if info.get("run_hash") != run_id:
                return None, "an unfinished calibration with different settings was found; starting over"
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        return Progress(int(info["finished"]), tensors, json.loads(info["meta"])), ""
    except Exception as e:  # a foreign or damaged file: never trust it
        return None, f"the progress checkpoint is unreadable ({type(e).__name__}); starting over"
