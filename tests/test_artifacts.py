"""Atomic artifact writes: round trips, the umask's permissions, no temporary file left behind on failure."""

from __future__ import annotations

import os

import pytest
import torch

from anna.artifacts import read_json, read_tensors, write_json, write_tensors
from anna.errors import AnnaError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_round_trips_with_plain_file_permissions(tmp_path) -> None:
    j = write_json(tmp_path / "a" / "x.json", {"v": [1, 2.5]})
    t = write_tensors(tmp_path / "a" / "x.safetensors", {"w": torch.arange(6.0).view(2, 3)})
    assert read_json(j) == {"format_version": 1, "v": [1, 2.5]}
    assert torch.equal(read_tensors(t)["w"], torch.arange(6.0).view(2, 3))
    for path in (j, t):
        assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json", "x.safetensors"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path) -> None:
    path = write_json(tmp_path / "x.json", {"v": 1})
    with pytest.raises(TypeError):
        write_json(path, {"v": object()})
    assert read_json(path)["v"] == 1 and [p.name for p in tmp_path.iterdir()] == ["x.json"]
    path.write_text("{not json")
    with pytest.raises(AnnaError, match="not valid JSON"):
        read_json(path)
