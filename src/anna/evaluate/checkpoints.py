"""The checkpoints that `evaluate` measures: safetensors or ONNX folders, each applied to the base pipeline and undone
after it (moved from `anna.evaluate.evaluate`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anna.adapters.base import Model
from anna.artifacts import read_json
from anna.errors import AnnaError
from anna.options.handle import QuantHandle
from anna.plan import Plan

ORIGINAL = "original"
ONNX_MANIFEST = "onnx_manifest.json"  # the marker of an ONNX export folder (anna.export.onnx_qdq.MANIFEST)

Echo = Callable[[str], Any] | None


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint folder to evaluate: its folder name for the images, its kind and its plan (when it has one)."""

    path: Path
    name: str
    kind: str
    plan: Plan | None
    component: str | None


def checkpoint_kind(path: Path) -> str:
    """`onnx` for an ONNX export folder (it holds `onnx_manifest.json`), else `safetensors`."""
    return "onnx" if (path / ONNX_MANIFEST).is_file() else "safetensors"


def describe_checkpoints(paths: Sequence[str | Path]) -> list[CheckpointRef]:
    """Validate checkpoint folders and give each a distinct image-folder name (its own name when free)."""
    refs: list[CheckpointRef] = []
    used = {ORIGINAL}
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_dir():
            raise AnnaError(f"checkpoint not found: {p} (expected a folder with model.safetensors and plan.json)")
        path = path.resolve()
        kind = checkpoint_kind(path)
        if kind == "safetensors":  # a truncated or edited checkpoint is found before any image is generated
            from anna.export.checkpoint import verify_checkpoint

            verify_checkpoint(path)
        plan = Plan.read(path / "plan.json", "checkpoint plan") if (path / "plan.json").is_file() else None
        component = None if plan is None else plan.component
        if plan is None and kind == "onnx" and (path / ONNX_MANIFEST).is_file():
            manifest = read_json(path / ONNX_MANIFEST, "ONNX manifest")
            obj = manifest.get("plan")
            plan = None if obj is None else Plan.from_json(obj, source=f"ONNX manifest {path / ONNX_MANIFEST}")
            component = plan.component if plan is not None else manifest.get("run_component")
        base = path.name or "checkpoint"
        name, k = base, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        refs.append(CheckpointRef(path, name, kind, plan, component))
    return refs


def apply_checkpoint(model: Model, path: Path, echo: Echo = print, handle: QuantHandle | None = None) -> None:
    """Rebuild the model's quantized component from a checkpoint folder (safetensors or ONNX). A safetensors
    checkpoint goes through ``handle`` when one is given (a reversible handle of the component undoes it)."""
    if checkpoint_kind(path) == "onnx":
        try:
            from anna.export.onnx_runtime import load_onnx_checkpoint_into
        except ImportError as e:
            raise AnnaError(f"{path} is an ONNX checkpoint; running it needs the onnx extra "
                            f"(pip install 'anna[onnx]'): {e}") from None
        load_onnx_checkpoint_into(model, path, echo=echo)
        return
    from anna.export.checkpoint import load_checkpoint_into

    load_checkpoint_into(model, path, echo=echo, handle=handle)


def load_reversibly(model: Model, ref: CheckpointRef, echo: Echo = print) -> Callable[[], None]:
    """Apply a checkpoint to ``model`` and return the function that undoes it (the base model again, exactly)."""
    if ref.kind == "onnx":  # the ONNX export replaces the pipeline object; the original comes back
        pipeline = model.pipeline
        apply_checkpoint(model, ref.path, echo=echo)

        def restore() -> None:
            model.pipeline = pipeline

        return restore
    from anna.export.checkpoint import read_checkpoint

    component = read_checkpoint(ref.path)[0].get("component") or model.default_component
    handle = QuantHandle(model.component(component))
    try:
        apply_checkpoint(model, ref.path, echo=echo, handle=handle)
    except BaseException:
        handle.undo()
        raise
    return handle.undo
