"""`anna calibrate` end to end in process: summary, artifacts, a bounded cache, and the rerun that returns at once."""

from __future__ import annotations

import json

from anna.calibrate import load_cached_inputs, load_run
from anna.cli import main


def test_cli_calibrate(tmp_path, capsys, coco_tsv):
    run_dir = tmp_path / "run"
    args = [
        "calibrate",
        "--model",
        "tiny-sdxl",
        "--prompts",
        f"{coco_tsv}:1-2",
        "--steps",
        "2",
        "--run",
        str(run_dir),
        "--cache-samples",
        "4",
        "--cache-mb",
        "0.1",
        "--quiet",
    ]
    main(args)
    out = capsys.readouterr().out
    assert "161 of 161 units observed" in out and "2 prompts" in out and "2 cached inputs" in out
    run = load_run(run_dir)
    assert run["settings"]["steps"] == 2 and run["settings"]["height"] == 64 and run["cache_mb"] == 0.1
    meta = json.loads((run_dir / "calibration" / "inputs.json").read_text())
    assert len(load_cached_inputs(run_dir)) == 2 and meta["bytes"] <= 0.1 * 2**20 and len(meta["plan"]) == 2
    main(args)
    captured = capsys.readouterr()
    assert "complete for these settings" in captured.err and "161 of 161" in captured.out
