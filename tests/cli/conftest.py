"""Fixtures of the CLI tests: a prompt file, and `tiny_run`, one small analysed run (tiny-sdxl, 1 prompt, 1 step,
64x64, the six mid-block resnet units) shared by the tests that need one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_helpers import TINY_CALIBRATE, invoke


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "p.txt"
    p.write_text("a red bicycle\n")
    return p


@pytest.fixture(scope="session")
def tiny_run_master(tmp_path_factory, prompt_file) -> Path:
    run = tmp_path_factory.mktemp("tiny-run") / "run"
    for argv in (["calibrate", *TINY_CALIBRATE, "--prompts", prompt_file, "--run", run],
                 ["analyze", "--run", run, "--validate", "0", "--fisher-samples", "0", "-q"],
                 ["search", "--run", run, "--size", "0.99", "--no-baselines", "--polish", "0"]):
        r = invoke(argv)
        assert r.code == 0, r.err
    return run


@pytest.fixture
def tiny_run(tiny_run_master, tmp_path) -> Path:
    """A private copy of the analysed tiny run (tests may damage it)."""
    return Path(shutil.copytree(tiny_run_master, tmp_path / "run"))
