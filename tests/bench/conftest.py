"""bench/ scripts are plain scripts, not a package. Their tests load the one module they test by path: putting bench/
on sys.path would shadow real packages for the whole session (bench/onnx.py is not `onnx`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> None:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


_load("peers_models")
_load("peers")
_load("peers_numerics")
