"""Resume: an interrupted run ends with the same statistics; a finished run returns at once; new settings restart."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from anna.adapters import GenerationSettings
from anna.calibrate import calibrate, load_run

SETTINGS = GenerationSettings(steps=3, guidance=5.0, height=64, width=64)  # as in conftest's unet_run


class Interrupt(Exception):
    pass


def _artifacts(run_dir):
    cal = run_dir / "calibration"
    return (
        json.loads((cal / "stats.json").read_text()),
        load_file(cal / "stats.safetensors"),
        json.loads((cal / "inputs.json").read_text()),
        load_file(cal / "inputs.safetensors"),
    )


def test_interrupted_run_resumes_to_identical_stats(unet_run, tmp_path):
    model, steps = unet_run.model, SETTINGS.steps
    calls = [0]

    def interrupt_in_third_prompt(module, args):
        calls[0] += 1
        if calls[0] == 2 * steps + 2:  # prompt 2, step 1: prompts 0 and 1 are checkpointed
            raise Interrupt

    handle = model.pipeline.unet.register_forward_pre_hook(interrupt_in_third_prompt)
    kwargs = dict(prompts=unet_run.prompts, settings=SETTINGS, seed=3, progress=False, checkpoint_seconds=0)
    try:
        with pytest.raises(Interrupt):
            calibrate(model, tmp_path, **kwargs)
    finally:
        handle.remove()
    unet = model.pipeline.unet
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())  # every hook removed
    assert not any("forward" in m.__dict__ for m in unet.modules())  # and every forward wrapper
    assert not any(type(p).__module__.startswith("anna") for p in unet.attn_processors.values())
    cal = tmp_path / "calibration"
    assert {p.name for p in cal.iterdir()} == {"progress.safetensors"}  # no partial artifact, no temp file
    assert not (tmp_path / "run.json").exists()

    messages: list[str] = []
    calibrate(model, tmp_path, log=messages.append, **kwargs)
    assert any("resuming calibration at prompt 3 of 3" in m for m in messages), messages
    assert load_run(tmp_path)["summary"]["resumed_from"] == 2
    assert not (cal / "progress.safetensors").exists()

    ref, got = _artifacts(unet_run.run_dir), _artifacts(tmp_path)
    assert got[0] == ref[0]  # stats.json
    for a, b in ((got[1], ref[1]), (got[3], ref[3])):  # histogram states, weight absmax, cached tensors
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert got[2] == ref[2]  # inputs.json


def test_finished_run_returns_at_once(unet_run, monkeypatch):
    before = (unet_run.run_dir / "run.json").read_text()

    def no_pipeline(*args, **kwargs):
        raise AssertionError("a finished calibration must not run the pipeline again")

    monkeypatch.setattr(type(unet_run.model.pipeline), "__call__", no_pipeline)
    messages: list[str] = []
    out = calibrate(
        unet_run.model, unet_run.run_dir, prompts=unet_run.prompts, settings=SETTINGS, seed=3, log=messages.append
    )
    assert out == unet_run.run_dir and any("complete" in m for m in messages)
    assert (unet_run.run_dir / "run.json").read_text() == before


def test_other_settings_start_over(unet_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(unet_run.run_dir, run_dir)
    messages: list[str] = []
    calibrate(
        unet_run.model,
        run_dir,
        prompts=unet_run.prompts[:2],
        settings=SETTINGS,
        seed=3,
        cache_samples=2,
        log=messages.append,
    )
    assert any("other settings; starting over" in m for m in messages), messages
    run = load_run(run_dir)
    assert run["prompts"] == unet_run.prompts[:2] and run["summary"]["resumed_from"] == 0
    assert len(json.loads((run_dir / "calibration" / "inputs.json").read_text())["samples"]) == 2


def _interrupt_in_second_prompt(model, run_dir, **kwargs) -> None:
    """Calibrate into `run_dir` and stop it in the second prompt (the first is checkpointed)."""
    calls = [0]

    def in_second_prompt(module, args):
        calls[0] += 1
        if calls[0] > SETTINGS.steps:
            raise Interrupt

    handle = model.pipeline.unet.register_forward_pre_hook(in_second_prompt)
    try:
        with pytest.raises(Interrupt):
            calibrate(model, run_dir, **kwargs)
    finally:
        handle.remove()


def test_unfinished_run_with_other_settings_starts_over(unet_run, tmp_path):
    model = unet_run.model
    kwargs = dict(prompts=unet_run.prompts[:2], settings=SETTINGS, progress=False, checkpoint_seconds=0)
    _interrupt_in_second_prompt(model, tmp_path, seed=0, **kwargs)
    assert (tmp_path / "calibration" / "progress.safetensors").is_file()
    messages: list[str] = []
    calibrate(model, tmp_path, seed=1, log=messages.append, **kwargs)
    assert any("different settings" in m and "starting over" in m for m in messages), messages
    assert load_run(tmp_path)["seed"] == 1 and load_run(tmp_path)["summary"]["resumed_from"] == 0


def test_checkpoint_that_cannot_be_restored_starts_over(unet_run, tmp_path):
    """A progress file of this run whose histogram state is unusable (say, from another anna version's layout) is
    reported and replaced, and the run ends with the statistics of an uninterrupted one."""
    from safetensors import safe_open

    from anna.artifacts import write_tensors

    model = unet_run.model
    kwargs = dict(prompts=unet_run.prompts[:2], settings=SETTINGS, seed=0, progress=False, checkpoint_seconds=0)
    _interrupt_in_second_prompt(model, tmp_path, **kwargs)
    progress = tmp_path / "calibration" / "progress.safetensors"
    with safe_open(str(progress), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    del tensors["hist/keys"]  # the per-histogram layout of earlier versions had no key list
    write_tensors(progress, tensors, metadata=meta)
    messages: list[str] = []
    calibrate(model, tmp_path, log=messages.append, **kwargs)
    assert any("cannot be restored" in m and "hist/keys" in m for m in messages), messages
    assert load_run(tmp_path)["summary"]["resumed_from"] == 0 and not progress.exists()
    whole = tmp_path / "whole"
    calibrate(model, whole, **kwargs)
    assert _artifacts(tmp_path)[0]["units"] == _artifacts(whole)[0]["units"]
