"""Calibrating the tiny-sdxl UNet: the stats.json schema, monotone statistics, every unit observed, weight absmax,
and cached inputs that re-run to the pipeline's own outputs bit for bit."""

from __future__ import annotations

import json

import torch

from anna.calibrate import load_cached_inputs, load_run, load_stats, run_component
from anna.calibrate.histogram import PERCENTILES
from anna.generate import generate_images
from anna.units import ACTIVATIONS, unit_modules

PCT_KEYS = [str(p) for p in PERCENTILES]


def test_artifact_layout(unet_run):
    cal = unet_run.run_dir / "calibration"
    names = {p.name for p in cal.iterdir()}
    assert names == {"stats.json", "stats.safetensors", "inputs.json", "inputs.safetensors"}  # no progress left
    run = load_run(unet_run.run_dir)
    assert run["format_version"] == 1 and run["model"] == "tiny-sdxl" and run["component"] == "unet"
    assert run["settings"] == {"steps": 3, "guidance": 5.0, "height": 64, "width": 64}
    assert run["seed"] == 3 and run["prompts"] == unet_run.prompts and run["cache_samples"] == 8


def test_stats_json_schema(unet_run):
    data = json.loads((unet_run.run_dir / "calibration" / "stats.json").read_text())
    assert data["format_version"] == 1 and data["model"] == "tiny-sdxl" and data["component"] == "unet"
    units = unit_modules(unet_run.model.pipeline.unet)
    assert list(data["units"]) == [n for n, _, _ in units]
    for name, kind, _ in units:
        entry = data["units"][name]
        assert entry["kind"] == kind
        assert set(entry) == {"kind", *ACTIVATIONS[kind]}
        for act in ACTIVATIONS[kind]:
            assert {"min", "max", "absmax", "percentiles"} <= set(entry[act])
            assert list(entry[act]["percentiles"]) == PCT_KEYS


def test_stats_are_monotone_and_finite(unet_run):
    for unit, acts in load_stats(unet_run.run_dir).items():
        for act, s in acts.items():
            chain = [s.min, *(s.percentiles[k] for k in PCT_KEYS), s.max]
            assert all(a <= b for a, b in zip(chain, chain[1:], strict=False)), (unit, act, chain)
            assert all(map(torch.isfinite, map(torch.tensor, chain))), (unit, act)
            assert s.absmax == max(abs(s.min), abs(s.max))


def test_every_unit_and_activation_observed(unet_run):
    stats = load_stats(unet_run.run_dir)
    units = unit_modules(unet_run.model.pipeline.unet)
    assert {k for _, k, _ in units} == {"conv", "linear", "attention"}
    for name, kind, _ in units:
        assert set(stats[name]) == set(ACTIVATIONS[kind])
        assert all(s.count > 0 and s.nonfinite == 0 for s in stats[name].values()), name
        if kind == "attention":
            p = stats[name]["p"]
            assert 0.0 <= p.min <= p.max <= 1.0
    summary = load_run(unet_run.run_dir)["summary"]
    assert summary["observed"] == summary["units"] == len(units) and summary["nonfinite"] == []


def test_counts_cover_every_step_and_prompt(unet_run):
    """conv_in sees the whole latent batch of every call: count == elements over all prompts x steps."""
    s = load_stats(unet_run.run_dir)["conv_in"]["input"]
    data = torch.cat([x.reshape(-1) for x in unet_run.conv_in_inputs])
    assert len(unet_run.conv_in_inputs) == len(unet_run.prompts) * unet_run.settings.steps
    assert s.count == data.numel()
    assert s.min == data.min().item() and s.max == data.max().item()
    exact = torch.quantile(data.double(), torch.tensor([p / 100 for p in PERCENTILES], dtype=torch.float64))
    for key, ref in zip(PCT_KEYS, exact.tolist(), strict=True):
        assert abs(s.percentiles[key] - ref) <= 0.01 * abs(ref) + 1e-6, (key, s.percentiles[key], ref)


def test_cached_inputs_rerun_bit_exactly(unet_run):
    meta = json.loads((unet_run.run_dir / "calibration" / "inputs.json").read_text())
    samples = load_cached_inputs(unet_run.run_dir)
    assert meta["kind"] == "pipeline" and len(samples) == len(meta["samples"]) == 8
    steps = unet_run.settings.steps
    for info, sample in zip(meta["samples"], samples, strict=True):
        args, kwargs = sample
        assert isinstance(args, tuple) and set(kwargs["added_cond_kwargs"]) == {"text_embeds", "time_ids"}
        out = run_component(unet_run.model, "unet", sample)
        assert torch.equal(out, unet_run.outputs[info["item"] * steps + info["call"]]), info


def test_calibration_follows_plain_generation(unet_run):
    """The UNet inputs cached during calibration are exactly those of plain generation at that prompt and step."""
    plain: list[torch.Tensor] = []
    unet = unet_run.model.pipeline.unet
    handle = unet.register_forward_pre_hook(lambda m, a: plain.append(a[0].clone()))
    try:
        generate_images(unet_run.model, unet_run.prompts, unet_run.settings, seed=3, progress=False)
    finally:
        handle.remove()
    meta = json.loads((unet_run.run_dir / "calibration" / "inputs.json").read_text())
    for info, (args, _) in zip(meta["samples"], load_cached_inputs(unet_run.run_dir), strict=True):
        assert torch.equal(args[0], plain[info["item"] * unet_run.settings.steps + info["call"]]), info


def test_cache_spreads_over_steps_and_prompts(unet_run):
    meta = json.loads((unet_run.run_dir / "calibration" / "inputs.json").read_text())
    picks = [(s["item"], s["call"]) for s in meta["samples"]]
    assert len(set(picks)) == 8
    assert {c for _, c in picks} == {0, 1, 2} and {i for i, _ in picks} == {0, 1, 2}
    assert meta["bytes"] == sum(s["bytes"] for s in meta["samples"])
