"""A disk that fills up during calibrate, analyze and export: a size-limited writer under every artifact write
(`anna.artifacts.write_fd`) raises ENOSPC once its byte budget is spent, after writing part of the data, as a full
disk does. Each time: one clean error line naming the file, no half-written file, the earlier artifacts unchanged and
loadable, and a rerun (space back) that finishes."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from cli_helpers import TINY_CALIBRATE, assert_one_line_error, invoke

import anna.artifacts


class DiskFull:
    """A writer with `budget` bytes of room left: it writes what fits, then fails as a full disk does."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.calls = 0

    def __call__(self, fd: int, data: bytes) -> None:
        self.calls += 1
        room = max(self.budget, 0)
        if len(data) > room:
            os.write(fd, bytes(data[:room]))
            self.budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.write(fd, data)
        self.budget -= len(data)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_temp_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def disk(monkeypatch):
    """Call `disk(budget)` to fill the disk after `budget` more bytes; `disk(None)` frees it again."""
    real = anna.artifacts.write_fd

    def set_budget(budget: int | None) -> DiskFull | None:
        if budget is None:
            monkeypatch.setattr(anna.artifacts, "write_fd", real)
            return None
        full = DiskFull(budget)
        monkeypatch.setattr(anna.artifacts, "write_fd", full)
        return full

    return set_budget


def test_full_disk_during_calibrate_analyze_and_export(disk, tmp_path, prompt_file):
    from anna.analyze.stage import load_analysis
    from anna.calibrate import load_run, load_stats
    from anna.export.checkpoint import load_checkpoint, verify_checkpoint

    run = tmp_path / "run"
    calibrate = ["calibrate", *TINY_CALIBRATE, "--prompts", prompt_file, "--run", run]
    analyze = ["analyze", "--run", run, "--validate", "0", "--fisher-samples", "0", "-q"]
    export = ["export", "--run", run, "--plan", "plans/size-0.990.json", "--out", run / "ck"]

    # calibrate: the disk fills after 200 kB (the statistics fit, the cached inputs do not)
    full = disk(200_000)
    r = invoke(calibrate)
    line = assert_one_line_error(r, str(run), "the disk is full: free some space, then rerun the same command")
    assert full.calls == 3 and str(run / "calibration" / "inputs.safetensors") in line
    _no_temp_files(run)
    disk(None)
    assert invoke(calibrate).code == 0
    stats = load_stats(run)
    assert load_run(run)["summary"]["observed"] == 6 and len(stats) == 6

    # analyze: full at once; the calibration is unchanged and still loads
    before = _snapshot(run)
    disk(0)
    r = invoke(analyze)
    assert_one_line_error(r, str(run / "analysis"), "the disk is full")
    _no_temp_files(run)
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if k in before} == before
    assert load_stats(run).keys() == stats.keys()
    disk(None)
    r = invoke(analyze)
    assert r.code == 0, r.err
    assert load_analysis(run).error_model.shape[0] == 6
    assert invoke(["search", "--run", run, "--size", "0.99", "--no-baselines", "--polish", "0"]).code == 0

    # export: a first checkpoint, then a second export over it fills the disk half-way through the tensors
    assert invoke(export).code == 0
    before = _snapshot(run)
    full = disk(100_000)
    r = invoke(export)
    assert_one_line_error(r, str(run / "ck" / "model.safetensors"), "the disk is full")
    _no_temp_files(run)
    assert _snapshot(run) == before  # the old checkpoint, plans, analysis and calibration: byte for byte
    verify_checkpoint(run / "ck")
    disk(None)
    assert invoke(export).code == 0
    assert load_checkpoint(run / "ck", echo=None).name == "tiny-sdxl"


def test_full_disk_names_a_json_artifact_and_keeps_the_old_one(disk, tmp_path):
    path = anna.artifacts.write_json(tmp_path / "a.json", {"x": 1})
    disk(10)
    with pytest.raises(OSError) as e:
        anna.artifacts.write_json(path, {"x": 2, "pad": "y" * 100})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    disk(None)
    assert anna.artifacts.read_json(path)["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_low_free_space_found_before_work(monkeypatch, tmp_path, prompt_file):
    import shutil

    import anna.checks

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(anna.checks.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    r = invoke(["calibrate", "--model", "tiny-sdxl", "--prompts", prompt_file, "--run", tmp_path / "r"])
    assert_one_line_error(r, f"--run {tmp_path / 'r'}: its disk has only 1,000 bytes free: free some space first")
