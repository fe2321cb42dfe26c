"""`anna export --format`: each format names the function that writes it, imported only when it is used.

A format function takes ``(run_dir, plan_path, out_dir)`` and writes ``out_dir``. ``safetensors`` is the quantized
checkpoint (``anna.export.checkpoint``); ``onnx-qdq`` is ONNX Runtime QDQ (``anna.export.onnx_qdq.export_onnx_qdq``,
extra ``anna[onnx]``). A new format is one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anna.errors import AnnaError


@dataclass(frozen=True)
class ExportFormat:
    module: str
    function: str
    extra: str | None = None  # the pip extra that its dependencies come with


FORMATS: dict[str, ExportFormat] = {
    "safetensors": ExportFormat("anna.export.checkpoint", "export_checkpoint"),
    "onnx-qdq": ExportFormat("anna.export.onnx_qdq", "export_onnx_qdq", extra="onnx"),
}


def exporter(fmt: str) -> Any:
    """The function that writes format ``fmt``, with a clear error for an unknown format or a missing extra."""
    if fmt not in FORMATS:
        raise AnnaError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as e:
        if e.name is not None and (e.name == spec.module or spec.module.startswith(e.name + ".")):
            raise AnnaError(f"{fmt} export is not available in this anna ({spec.module} is missing)") from None
        hint = f": pip install 'anna[{spec.extra}]'" if spec.extra else ""
        need = f"anna[{spec.extra}]" if spec.extra else f"the module {e.name}"
        raise AnnaError(f"{fmt} export needs {need} (missing module {e.name}){hint}") from None
    fn = getattr(module, spec.function, None)
    if fn is None:
        raise AnnaError(f"{fmt} export is not available in this anna ({spec.module}.{spec.function} is missing)")
    return fn


def export(fmt: str, run_dir: str | Path, plan_path: str | Path, out_dir: str | Path) -> Any:
    """Write ``out_dir`` in format ``fmt`` from a calibration run and a plan."""
    return exporter(fmt)(run_dir, plan_path, out_dir)
