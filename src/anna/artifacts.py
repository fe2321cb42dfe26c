"""Atomic artifact writes: JSON for people, safetensors for tensors. Write to a temporary file, then rename."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

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


def write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (every artifact's bytes pass here, so a full disk raises ``OSError`` here)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, synced, then renamed over it. A failure
    (a full disk, a read-only folder) leaves no temporary file behind and the previous ``path`` untouched."""
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    try:
        try:
            write_fd(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # os.write names no file: name the artifact
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: dict[str, Any]) -> Path:
    """Write `obj` (with `format_version` added when missing) atomically as indented JSON."""
    obj = {"format_version": FORMAT_VERSION, **obj}
    return write_text(path, json.dumps(obj, indent=1, sort_keys=False, allow_nan=True) + "\n")


def read_json(path: str | Path, what: str = "artifact") -> dict[str, Any]:
    """Read a JSON artifact, with a clear error when it is missing, corrupt or of an unknown format version."""
    path = Path(path)
    if path.is_dir():
        raise AnnaError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise AnnaError(f"{what} not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnaError(f"{what} {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise AnnaError(f"{what} {path} nests lists and objects too deeply to be an anna artifact") from None
    if not isinstance(obj, dict):
        raise AnnaError(f"{what} {path} must hold a JSON object")
    version = obj.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise AnnaError(f"{what} {path} has format_version {version}; this anna reads {FORMAT_VERSION}")
    return obj


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save tensors to safetensors atomically (contiguous CPU copies), through the same writer as every artifact."""
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    return write_bytes(path, data)


def read_tensors(path: str | Path, what: str = "tensor file") -> dict[str, torch.Tensor]:
    """Load a safetensors file (never unpickles), with a clear error when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise AnnaError(f"{what} not found: {path}")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for truncation and bad headers
        raise AnnaError(f"{what} {path} is corrupt or truncated: {e}") from None
