"""Selection on hand-made metrics: smallest passing, null metrics cannot pass, none passing names the closest,
no checkpoints is an error, selected.json carries the FP16 units of the plan."""

from __future__ import annotations

import json

import pytest

from anna.artifacts import read_json, write_json
from anna.cli import main
from anna.errors import AnnaError
from anna.evaluate.select import Thresholds, select_checkpoint, select_to_file


def entry(ckpt, size, steps, mse, clip=30.0, fid=1.0, **extra):
    e = {"checkpoint": ckpt, "name": ckpt.rsplit("/", 1)[-1], "steps": steps, "size_ratio": size, "mse": mse,
         "clip": clip, "clip_reason": None, "fid": fid, "fid_reason": None}
    return e | extra


def metrics(*entries, clip=31.0, fid=0.0):
    return {"format_version": 1, "model": "m", "steps": [1, 2], "entries": list(entries),
            "original": [{"steps": s, "clip": clip, "fid": fid} for s in (1, 2)]}


SWEEP = metrics(
    entry("/c/a50", 0.50, 1, 5.0), entry("/c/a50", 0.50, 2, 25.0),  # MSE too high at 2 steps
    entry("/c/a60", 0.60, 1, 3.0), entry("/c/a60", 0.60, 2, 9.0, clip=30.5),
    entry("/c/a55", 0.55, 1, 4.0), entry("/c/a55", 0.55, 2, 12.0, fid=1.5),
)


def test_smallest_checkpoint_meeting_every_threshold():
    sel = select_checkpoint(SWEEP, Thresholds(max_mse=15.0, max_fid_increase=2.0, min_clip_delta=-1.5))
    assert sel.chosen.checkpoint == "/c/a55" and sel.chosen.size_ratio == 0.55
    assert sel.steps == [1, 2] and all(c.passed for c in sel.chosen.checks)
    assert len(sel.chosen.checks) == 6  # three thresholds at two steps values
    fid2 = next(c for c in sel.chosen.checks if c.threshold == "max_fid_increase" and c.steps == 2)
    assert fid2.value == pytest.approx(1.5) and fid2.margin == pytest.approx(0.5)
    clip2 = next(c for c in sel.chosen.checks if c.threshold == "min_clip_delta" and c.steps == 2)
    assert clip2.value == pytest.approx(-1.0) and clip2.margin == pytest.approx(0.5)
    assert "a50" in sel.reason and "misses by 10" in sel.reason  # the smaller one that failed, and by how much
    # tighter MSE: only the largest passes
    assert select_checkpoint(SWEEP, Thresholds(max_mse=10.0)).chosen.checkpoint == "/c/a60"
    # no thresholds: the smallest
    assert select_checkpoint(SWEEP, Thresholds()).chosen.checkpoint == "/c/a50"


def test_none_passing_names_the_closest():
    with pytest.raises(AnnaError) as e:
        select_checkpoint(SWEEP, Thresholds(max_mse=8.0))
    msg = str(e.value)
    assert "no checkpoint of 3 meets --max-mse 8" in msg
    assert "closest: a60" in msg and "misses by 1" in msg and "\n" not in msg


def test_null_metric_cannot_be_met():
    data = metrics(
        entry("/c/x", 0.5, 1, 1.0, fid=None, fid_reason="FID needs torch-fidelity"),
        entry("/c/x", 0.5, 2, 1.0, fid=None, fid_reason="FID needs torch-fidelity"),
        entry("/c/y", 0.6, 1, 1.0), entry("/c/y", 0.6, 2, 1.0),
    )
    sel = select_checkpoint(data, Thresholds(max_fid_increase=5.0))
    assert sel.chosen.checkpoint == "/c/y" and "FID needs torch-fidelity" in sel.reason
    only_null = metrics(*[e for e in data["entries"] if e["checkpoint"] == "/c/x"])
    with pytest.raises(AnnaError, match="unknown: fid is null .FID needs torch-fidelity"):
        select_checkpoint(only_null, Thresholds(max_fid_increase=5.0))
    # the original's metric being null fails a delta threshold too
    no_orig_clip = metrics(entry("/c/y", 0.6, 1, 1.0), entry("/c/y", 0.6, 2, 1.0), clip=None)
    with pytest.raises(AnnaError, match="original's clip is null"):
        select_checkpoint(no_orig_clip, Thresholds(min_clip_delta=-1.0))


def test_a_missing_steps_value_fails():
    data = metrics(entry("/c/x", 0.5, 1, 1.0), entry("/c/y", 0.6, 1, 1.0), entry("/c/y", 0.6, 2, 1.0))
    sel = select_checkpoint(data, Thresholds(max_mse=2.0))
    assert sel.chosen.checkpoint == "/c/y" and "not evaluated at 2 step(s)" in sel.reason


def test_no_checkpoints_is_an_error():
    with pytest.raises(AnnaError, match="no checkpoints to select from"):
        select_checkpoint(metrics(), Thresholds(max_mse=1.0))


def test_selected_json_has_the_fp16_units_of_the_plan(tmp_path, capsys):
    ckpt = tmp_path / "ckpt-55"
    units = {"conv_in": "fp16", "down.0": "fp8-moderate", "mid.attn1": "fp16"}
    write_json(ckpt / "plan.json", {"model": "m", "component": "unet", "size_ratio": 0.55, "bytes": 1100,
                                     "units": units})
    data = metrics(entry(str(ckpt), 0.55, 1, 2.0), entry(str(ckpt), 0.55, 2, 3.0),
                   entry("/c/big", 0.7, 1, 1.0), entry("/c/big", 0.7, 2, 1.0))
    write_json(tmp_path / "eval" / "metrics.json", data)
    sel = select_to_file(tmp_path / "eval", Thresholds(max_mse=5.0), tmp_path / "selected.json")
    assert sel.fp16_units == ["conv_in", "mid.attn1"]
    out = read_json(tmp_path / "selected.json")
    assert out["format_version"] == 1 and out["checkpoint"] == str(ckpt) and out["size_ratio"] == 0.55
    assert out["fp16_units"] == ["conv_in", "mid.attn1"] and out["units"] == units and out["component"] == "unet"
    assert out["thresholds"]["max_mse"] == 5.0 and out["reason"].startswith("smallest of 2")
    assert [c["passed"] for c in out["candidates"]] == [True, True]

    # the CLI: success, and a one-line error with exit code 2
    main(["select", "--eval", str(tmp_path / "eval"), "--max-mse", "5", "--out", str(tmp_path / "s2.json")])
    assert json.loads((tmp_path / "s2.json").read_text())["name"] == "ckpt-55"
    with pytest.raises(SystemExit) as e:
        main(["select", "--eval", str(tmp_path / "eval"), "--max-mse", "0.5", "--out", str(tmp_path / "s3.json")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: no checkpoint of 2 meets --max-mse 0.5")
    assert not (tmp_path / "s3.json").exists()
