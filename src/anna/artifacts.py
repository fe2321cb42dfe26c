"""Atomic artifact writes: JSON for people, safetensors for tensors. Write to a temporary file, then rename."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from anna.errors import AnnaError

FORMAT_VERSION = 1


def temp_file_beside(path: Path) -> tuple[int, str]:
    """A new temporary file (fd, name) in `path`'s folder, for a write that ends with `os.replace` onto `path`.

    It gets the permissions a plain `open` would give (the umask applies), unlike `tempfile.mkstemp`'s 0600, so the
    artifact is as readable as any other file its user writes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue


def write_json(path: str | Path, obj: dict[str, Any]) -> Path:
    """Write `obj` (with `format_version` added when missing) atomically as indented JSON."""
    path = Path(path)
    obj = {"format_version": FORMAT_VERSION, **obj}
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False, allow_nan=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | Path, what: str = "artifact") -> dict[str, Any]:
    """Read a JSON artifact, with a clear error when it is missing, corrupt or of an unknown format version."""
    path = Path(path)
    if not path.is_file():
        raise AnnaError(f"{what} not found: {path}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnaError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise AnnaError(f"{what} {path} must hold a JSON object")
    version = obj.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise AnnaError(f"{what} {path} has format_version {version}; this anna reads {FORMAT_VERSION}")
    return obj


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save tensors to safetensors atomically (contiguous CPU copies)."""
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    mode = os.fstat(fd).st_mode & 0o777
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, mode)  # safetensors recreates the file as 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_tensors(path: str | Path, what: str = "tensor file") -> dict[str, torch.Tensor]:
    """Load a safetensors file (never unpickles), with a clear error when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise AnnaError(f"{what} not found: {path}")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for truncation and bad headers
        raise AnnaError(f"{what} {path} is corrupt or truncated: {e}") from None
