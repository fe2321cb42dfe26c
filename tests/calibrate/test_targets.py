"""Other targets calibrate the same way: both text encoders, the VAE decoder, and a generic module (MiniLM)."""

from __future__ import annotations

import json

import pytest
import torch

from anna.adapters import GenerationSettings
from anna.calibrate import calibrate, load_cached_inputs, load_run, load_stats, run_component
from anna.units import ACTIVATIONS, unit_modules

SETTINGS = GenerationSettings(steps=2, guidance=5.0, height=64, width=64)


def _calibrate_capturing(model, component, run_dir, **kwargs):
    """Calibrate while recording every output of the component."""
    module = model.component(component)
    outputs = []
    handle = module.register_forward_hook(lambda m, a, out: outputs.append(model.component_output(component, out)))
    try:
        calibrate(model, run_dir, component=component, progress=False, **kwargs)
    finally:
        handle.remove()
    return outputs


def _assert_all_observed(run_dir, module):
    stats = load_stats(run_dir)
    units = unit_modules(module)
    assert list(stats) == [n for n, _, _ in units]
    for name, kind, _ in units:
        assert set(stats[name]) == set(ACTIVATIONS[kind]), name
        assert all(s.count > 0 for s in stats[name].values()), name
    return stats


@pytest.mark.parametrize("component", ["text_encoder", "text_encoder_2", "vae_decoder"])
def test_pipeline_components(tiny_model, prompts, tmp_path, component):
    outputs = _calibrate_capturing(tiny_model, component, tmp_path, prompts=prompts[:2], settings=SETTINGS)
    module = tiny_model.component(component)
    stats = _assert_all_observed(tmp_path, module)
    kinds = {k for _, k, _ in unit_modules(module)}
    assert "attention" in kinds
    for name, kind, _ in unit_modules(module):
        if kind == "attention":
            assert 0.0 <= stats[name]["p"].min <= stats[name]["p"].max <= 1.0
    run = load_run(tmp_path)
    assert run["component"] == component and run["summary"]["observed"] == run["summary"]["units"]
    meta = json.loads((tmp_path / "calibration" / "inputs.json").read_text())
    samples = load_cached_inputs(tmp_path)
    assert [(s["item"], s["call"]) for s in meta["samples"]] == [(0, 0), (1, 0)]  # one call per prompt kept
    calls_per_prompt = len(outputs) // 2
    for info, sample in zip(meta["samples"], samples, strict=True):
        if component.startswith("text_encoder"):
            assert sample[1].get("output_hidden_states") is True  # re-run as the pipeline ran it
        ref = outputs[info["item"] * calls_per_prompt + info["call"]]
        assert torch.equal(run_component(tiny_model, component, sample), ref)


def test_text_encoder_stops_before_the_unet(tiny_model, prompts, tmp_path):
    calls = []
    handle = tiny_model.pipeline.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        calibrate(
            tiny_model, tmp_path, component="text_encoder", prompts=prompts[:2], settings=SETTINGS, progress=False
        )
    finally:
        handle.remove()
    assert len(calls) == 2  # the UNet is entered once per prompt, and stopped there


def test_minilm(tmp_path, prompts):
    from anna.adapters import minilm

    model = minilm.load(prompts + ["a short one", "quantization to a size budget"], batch_size=2)
    outputs = _calibrate_capturing_generic(model, tmp_path)
    module = model.component("model")
    stats = _assert_all_observed(tmp_path, module)
    assert 0.0 <= stats["encoder.layer.0.attention"]["p"].min <= stats["encoder.layer.0.attention"]["p"].max <= 1.0
    run = load_run(tmp_path)
    assert run["component"] == "model" and run["batches"] == 3 and run["settings"] is None
    samples = load_cached_inputs(tmp_path)
    assert len(samples) == 3
    for i, batch in enumerate(samples):
        assert batch.keys() == model.batches[i].keys()
        assert all(torch.equal(batch[k], model.batches[i][k]) for k in batch)
        assert torch.equal(run_component(model, "model", batch), outputs[i])


def _calibrate_capturing_generic(model, run_dir):
    outputs = []
    forward = model.forward

    def recording(module, batch):
        out = forward(module, batch)
        outputs.append(out.clone())
        return out

    model.forward = recording
    try:
        calibrate(model, run_dir, progress=False)
    finally:
        model.forward = forward
    return outputs
