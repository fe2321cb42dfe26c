"""The run folder: every stage records a digest of its inputs and redoes its work when they change; a run made
from Python continues from the command line when its model has a name the command line can load."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import anna
from anna.adapters import GenerationSettings, load_model
from anna.analyze.stage import analyze
from anna.calibrate import calibrate
from anna.cli import main
from anna.export.checkpoint import read_checkpoint
from anna.run import export_plans
from anna.runfolder import RunFolder
from anna.search import search

SETTINGS = GenerationSettings(steps=1, guidance=5.0, height=64, width=64)
RATIO = 0.95


def _stages(model, run_dir, prompts):
    lines: list[str] = []
    calibrate(model, run_dir, component="text_encoder", prompts=prompts, settings=SETTINGS, cache_samples=2,
              progress=False, log=lines.append)
    analyze(run_dir, model=model, validate=0, progress=False, echo=lines.append)
    search(run_dir, [RATIO], model=model, measure=False, baselines=False, echo=lines.append)
    export_plans(run_dir, [RATIO], model, echo=lines.append)
    return "\n".join(lines)


def test_recalibrating_with_other_prompts_redoes_analyze_search_and_export(tmp_path):
    model = load_model("tiny-sdxl")
    folder = RunFolder(tmp_path / "run")
    first = _stages(model, folder.root, ["a red bicycle", "a cat on a sofa"])
    assert "is up to date" not in first and "(1 exported, 0 up to date)" in first
    ckpt = folder.checkpoint(RATIO)
    em_before = json.loads(folder.error_model_json.read_text())
    ck_before = read_checkpoint(ckpt)

    same = _stages(model, folder.root, ["a red bicycle", "a cat on a sofa"])
    assert "complete for these settings" in same
    assert f"analysis in {folder.analysis} is up to date" in same
    assert f"search in {folder.root} is up to date" in same
    assert "(0 exported, 1 up to date)" in same

    other = _stages(model, folder.root, ["a bowl of fruit", "a snowy mountain road"])
    assert "is up to date" not in other and "complete for these settings" not in other  # redone
    assert "(1 exported, 0 up to date)" in other
    em_after = json.loads(folder.error_model_json.read_text())
    assert em_after["calibration"] != em_before["calibration"] == ck_before[0]["inputs"]["calibration"]
    assert json.loads(folder.front_json.read_text())["inputs"] != ""
    plan, tensors = read_checkpoint(ckpt)
    assert plan["inputs"]["calibration"] == em_after["calibration"]
    scales = [k for k in tensors if k.endswith("input_scale") and k in ck_before[1]]  # in both plans
    assert scales and any(not torch.equal(tensors[k], ck_before[1][k]) for k in scales)  # new ranges


def test_a_changed_plan_is_exported_again(tmp_path):
    model = load_model("tiny-sdxl")
    folder = RunFolder(tmp_path / "run")
    _stages(model, folder.root, ["a red bicycle", "a cat on a sofa"])
    plan = json.loads(folder.plan(RATIO).read_text())
    quantized = [u for u, o in plan["units"].items() if o != "fp16"]
    plan["units"][quantized[0]] = "fp16"  # edited by hand
    folder.plan(RATIO).write_text(json.dumps(plan))
    lines: list[str] = []
    export_plans(folder.root, [RATIO], model, echo=lines.append)
    assert "(1 exported, 0 up to date)" in lines[-1]
    assert read_checkpoint(folder.checkpoint(RATIO))[0]["units"][quantized[0]] == "fp16"


def test_a_python_run_continues_from_the_cli(tmp_path, capsys):
    from anna.adapters.tiny import build_pipeline

    run = tmp_path / "run"
    q = anna.quantize(build_pipeline(), ["a red bicycle", "a cat on a sofa"], budget=RATIO, component="text_encoder",
                      name="tiny-sdxl", settings=SETTINGS, run_dir=run, cache_samples=2)
    anna.save(q, tmp_path / "api-ck")
    main(["export", "--run", str(run), "--plan", "plans/size-0.950.json", "--out", str(tmp_path / "cli-ck")])
    (pa, a), (pb, b) = read_checkpoint(tmp_path / "api-ck"), read_checkpoint(tmp_path / "cli-ck")
    assert pa["units"] == pb["units"] and list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)

    # a sweep whose lower budgets lie below the smallest plan runs the feasible ones and names the skipped ones
    capsys.readouterr()
    main(["search", "--run", str(run), "--sizes", "0.50:0.95:0.05", "--no-baselines", "--no-measure"])
    front = json.loads((run / "front.json").read_text())
    done, skipped = [p["budget"] for p in front["points"]], front["skipped"]
    assert skipped and done and sorted(done + skipped) == [round(0.5 + k * 0.05, 2) for k in range(10)]
    assert max(skipped) < min(done) and f"skipped {len(skipped)} infeasible budget(s) 0.5, " in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # a single infeasible budget stays an error
        main(["search", "--run", str(run), "--size", str(max(skipped))])
    assert e.value.code == 2 and "infeasible: the smallest plan of this bag is" in capsys.readouterr().err


def test_a_python_run_of_a_module_says_what_to_pass(tmp_path, capsys):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    run = tmp_path / "run"
    anna.quantize(net, [torch.randn(2, 8) for _ in range(2)], budgets=[0.8], run_dir=run)
    with pytest.raises(SystemExit) as e:
        main(["search", "--run", str(run), "--size", "0.9"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "made from Python with model 'Sequential'" in err and f"anna.quantize(module, data, run_dir='{run}'" in err
