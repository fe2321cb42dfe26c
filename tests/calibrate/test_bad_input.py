"""Bad input: clear AnnaErrors (one line, exit 2 in the CLI), and NaN/Inf reported without poisoning the statistics."""

from __future__ import annotations

import math

import pytest
import torch

from anna.adapters import GenerationSettings, from_module, load_model
from anna.calibrate import calibrate, load_run, load_stats
from anna.cli import main
from anna.errors import AnnaError

SETTINGS = GenerationSettings(steps=2, guidance=5.0, height=64, width=64)


def test_nonfinite_reported_at_its_unit_and_excluded(tiny_model, prompts, tmp_path):
    """NaN and Inf injected into conv_out's input (and cleaned from its output) are counted there, and only there."""
    unet = tiny_model.pipeline.unet

    def inject(module, args):
        x = args[0].clone()
        x[0, 0, 0, 0] = math.nan
        x[0, 1, 0, 0] = math.inf
        return (x, *args[1:])

    handles = [
        unet.conv_out.register_forward_pre_hook(inject),
        unet.conv_out.register_forward_hook(lambda m, a, out: out.nan_to_num(0.0, 0.0, 0.0)),
    ]
    messages: list[str] = []
    try:
        calibrate(tiny_model, tmp_path, prompts=prompts[:2], settings=SETTINGS, log=messages.append)
    finally:
        for h in handles:
            h.remove()
    calls = 2 * SETTINGS.steps
    summary = load_run(tmp_path)["summary"]
    assert summary["nonfinite"] == [{"unit": "conv_out", "activation": "input", "count": 2 * calls, "first_item": 0}]
    assert any("conv_out" in m and "non-finite" in m for m in messages)
    stats = load_stats(tmp_path)
    s = stats["conv_out"]["input"]
    assert s.nonfinite == 2 * calls
    assert all(math.isfinite(v) for v in (s.min, s.max, s.absmax, *s.percentiles.values()))
    assert s.count == calls * 2 * 32 * 8 * 8 - 2 * calls  # CFG batch 2, 32 channels, 8x8 latents
    assert all(a.nonfinite == 0 for name, acts in stats.items() if name != "conv_out" for a in acts.values())


def test_nonfinite_in_a_staged_tensor_names_its_prompt(tmp_path):
    """A small activation that is staged and binned later still reports the item that produced the NaN."""
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)).eval()
    batches = [torch.randn(3, 4), torch.randn(3, 4), torch.tensor([[1.0, math.nan, 0.0, 0.0]])]

    def forward(m, x):
        return m[1](m[0](x).nan_to_num(0.0))

    model = from_module(module, batches, forward=forward)
    calibrate(model, tmp_path, progress=False)
    nf = load_run(tmp_path)["summary"]["nonfinite"]
    assert nf == [{"unit": "0", "activation": "input", "count": 1, "first_item": 2}]
    assert load_stats(tmp_path)["0"]["input"].count == 4 * 7 - 1


def test_empty_prompts(tiny_model, tmp_path):
    with pytest.raises(AnnaError, match="at least one prompt"):
        calibrate(tiny_model, tmp_path, prompts=[])


def test_unknown_unit_pattern(tiny_model, prompts, tmp_path):
    with pytest.raises(AnnaError, match="include pattern 'down_blocks.9.\\*' matches no unit"):
        calibrate(tiny_model, tmp_path, prompts=prompts, include=["down_blocks.9.*"])
    with pytest.raises(AnnaError, match="exclude pattern"):
        calibrate(tiny_model, tmp_path, prompts=prompts, exclude=["nothing*"])


def test_include_restricts_units(tiny_model, prompts, tmp_path):
    calibrate(tiny_model, tmp_path, prompts=prompts[:1], settings=SETTINGS, include=["conv_*"], progress=False)
    assert set(load_stats(tmp_path)) == {"conv_in", "conv_out"}


def test_cache_limits(tiny_model, prompts, tmp_path):
    with pytest.raises(AnnaError, match="cache_samples must be at least 1"):
        calibrate(tiny_model, tmp_path, prompts=prompts, cache_samples=0)
    with pytest.raises(AnnaError, match="too small for one cached input"):
        calibrate(tiny_model, tmp_path, prompts=prompts, settings=SETTINGS, cache_mb=0.001, progress=False)
    assert not (tmp_path / "calibration" / "stats.json").exists()
    with pytest.raises(AnnaError, match="cache steps"):
        calibrate(tiny_model, tmp_path, prompts=prompts, settings=SETTINGS, cache_steps=[5])


def test_generic_model_takes_no_prompts(tmp_path):
    model = from_module(torch.nn.Linear(2, 2), [torch.randn(1, 2)])
    with pytest.raises(AnnaError, match="prompts do not apply"):
        calibrate(model, tmp_path, prompts=["a cat"])


def test_meta_model_needs_weights(tmp_path):
    with pytest.raises(AnnaError, match="no weights"):
        calibrate(load_model("sdxl"), tmp_path, prompts=["a cat"])


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    cases = [
        (["--prompts", str(empty)], "no prompts"),
        (["--prompts", str(tmp_path / "missing.txt")], "prompt file not found"),
        (["--prompts", str(empty) + "x", "--cache-steps", "a,b"], "--cache-steps"),
    ]
    for extra, text in cases:
        with pytest.raises(SystemExit) as e:
            main(["calibrate", "--model", "tiny-sdxl", "--run", str(tmp_path / "run"), *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and text in err and err.count("\n") == 1, err
