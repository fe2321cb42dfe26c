"""analyze + search on a real tiny-sdxl run: artifacts, resume, validation, the front, baselines and bad budgets."""

import json

import numpy as np
import pytest

from anna.analyze.stage import analyze, load_analysis
from anna.budgets import parse_sizes
from anna.calibrate import calibrate
from anna.errors import AnnaError
from anna.prompts import load_prompts
from anna.search import search

UNITS = ["up_blocks.2.*", "conv_out", "up_blocks.1.attentions.2.*"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, coco_tsv):
    from anna.adapters import load_model

    model = load_model("tiny-sdxl")
    run_dir = tmp_path_factory.mktemp("run")
    prompts = load_prompts(f"{coco_tsv}:1-2")
    calibrate(model, run_dir, prompts=prompts, cache_samples=2, include=UNITS, progress=False, log=None)
    return model, run_dir


def test_analyze_resume_gives_the_same_model(run, tmp_path):
    """The exact model checkpoints unit by unit: a stopped analysis resumes to the same model."""
    model, run_dir = run

    class Stop(Exception):
        pass

    import anna.analyze.stage as stage

    original = stage.write_json
    calls = {"n": 0}

    def stop_after_three_units(path, obj):
        out = original(path, obj)
        if path.name == "partial.json":
            calls["n"] += 1
            if calls["n"] == 3:
                raise Stop
        return out

    stage.write_json = stop_after_three_units
    try:
        with pytest.raises(Stop):
            analyze(run_dir, model=model, validate=0, progress=False, echo=None, error_model="exact")
    finally:
        stage.write_json = original
    assert json.loads((run_dir / "analysis" / "partial.json").read_text())["done"] == 3
    analyze(run_dir, model=model, validate=12, progress=False, echo=None, error_model="exact")
    resumed = load_analysis(run_dir)
    assert not (run_dir / "analysis" / "partial.json").exists()

    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    for name in ("run.json", "calibration"):
        src = run_dir / name
        (fresh_dir / name).symlink_to(src, target_is_directory=src.is_dir())
    analyze(fresh_dir, model=model, validate=0, progress=False, echo=None, error_model="exact")
    fresh = load_analysis(fresh_dir)
    assert np.array_equal(resumed.error_model.diag, fresh.error_model.diag)
    assert np.array_equal(resumed.error_model.sketches, fresh.error_model.sketches)

    em = resumed.error_model
    assert em.options[0] == "fp16" and np.all(em.diag[:, 0] == 0) and np.all(em.diag[:, 1:] > 0)
    assert em.fisher is not None and np.all(em.fisher[:, 1:] >= 0)
    validation = json.loads((run_dir / "analysis" / "validation.json").read_text())
    assert validation["n_plans"] >= 10
    # the additive model ranks plans near the front of a real UNet well
    assert validation["spearman"] > 0.7
    c = validation["correction"]
    assert c["diag_scale"] > 0 and 0 <= c["cross_scale"] <= 1
    assert c["r2"] >= validation["r2"] - 1e-9  # the fit can only do better in sample
    assert load_analysis(run_dir).error_model.cross_scale == c["cross_scale"]
    assert load_analysis(run_dir, corrected=False).error_model.cross_scale == 1.0


def test_search_front_and_baselines(run):
    model, run_dir = run
    if not (run_dir / "analysis" / "error_model.json").exists():
        analyze(run_dir, model=model, validate=0, progress=False, echo=None)
    analysis = load_analysis(run_dir)
    lo = analysis.size_ratio(analysis.sizes.argmin(1))
    ratios = [round(lo + d, 4) for d in (0.002, 0.01, 0.03)]
    front = json.loads(search(run_dir, ratios, model=model, measure=False, echo=None).read_text())
    points = front["points"]
    assert [p["budget"] for p in points] == ratios
    for p in points:
        assert p["size_ratio"] <= p["budget"] + 1e-9
        plan = json.loads((run_dir / p["plan"]).read_text())
        assert plan["predicted_mse"] == pytest.approx(p["predicted_mse"])
        assert plan["bytes"] == p["bytes"]
    predicted = [p["predicted_mse"] for p in points]
    assert predicted == sorted(predicted, reverse=True)  # more bytes never predicts more error
    for method in ("uniform", "greedy", "fisher", "random"):
        for ours, theirs in zip(points, front["baselines"][method], strict=True):
            if theirs.get("feasible", True):
                # the solver minimises the same objective the baselines are scored on
                assert ours["predicted_mse"] <= theirs["predicted_mse"] * (1 + 1e-9)

    # measured: the model proposes, measurement picks; a smaller budget's plan is always a candidate
    unpolished = json.loads(search(run_dir, ratios, model=model, echo=None).read_text())
    front = json.loads(search(run_dir, ratios, model=model, polish=8, echo=None).read_text())
    measured = [p["measured_mse"] for p in front["points"]]
    # the polish only keeps equal-size swaps that measure better
    for p, q in zip(front["points"], unpolished["points"], strict=True):
        assert p["measured_mse"] <= q["measured_mse"] and p["size_ratio"] <= p["budget"] + 1e-9
    assert all(m > 0 for m in measured) and measured == sorted(measured, reverse=True)
    assert all(json.loads((run_dir / p["plan"]).read_text())["source"] for p in front["points"])
    assert all(b["measured_mse"] > 0 for b in front["baselines"]["greedy"] if b.get("feasible", True))


def test_infeasible_budget_and_bad_sizes(run):
    model, run_dir = run
    if not (run_dir / "analysis" / "error_model.json").exists():
        analyze(run_dir, model=model, validate=0, progress=False, echo=None)
    with pytest.raises(AnnaError, match="smallest plan of this bag is 0\\.\\d+"):
        search(run_dir, [0.05], model=model, measure=False, echo=None)
    assert parse_sizes(sizes="0.50:0.60:0.01") == [round(0.5 + k / 100, 6) for k in range(11)]
    assert parse_sizes(size=0.501) == [0.501]
    with pytest.raises(AnnaError):
        parse_sizes(sizes="0.6:0.5:0.01")


def test_validation_alone_reuses_the_error_model(run):
    model, run_dir = run
    analyze(run_dir, model=model, validate=0, progress=False, echo=None)
    saved = (run_dir / "analysis" / "error_model.safetensors").stat().st_mtime_ns
    analyze(run_dir, model=model, validate=6, progress=False, echo=None)
    assert (run_dir / "analysis" / "error_model.safetensors").stat().st_mtime_ns == saved
    assert json.loads((run_dir / "analysis" / "validation.json").read_text())["n_plans"] >= 5
    analyze(run_dir, model=model, validate=0, fisher_samples=0, progress=False, echo=None)  # another configuration
    assert not (run_dir / "analysis" / "validation.json").exists()  # a stale correction is never applied


def test_search_never_picks_an_option_whose_trial_was_not_finite(run):
    from anna.artifacts import read_tensors, write_tensors

    model, run_dir = run
    analyze(run_dir, model=model, validate=0, progress=False, echo=None)
    path = run_dir / "analysis" / "error_model.safetensors"
    tensors = read_tensors(path)
    diag = tensors["diag"].clone()
    diag[:, 1:] = float("inf")  # every FP8 trial of every unit "produced NaN"
    diag[0, 2] = 1e-9  # except one option of the first unit
    write_tensors(path, {**tensors, "diag": diag})
    analysis = load_analysis(run_dir)
    ratio = analysis.size_ratio(np.array([2] + [0] * (len(analysis.error_model.units) - 1)))
    front = json.loads(search(run_dir, [ratio, 1.0], model=model, measure=False, echo=None).read_text())
    quantized = [
        [u for u, o in json.loads((run_dir / p["plan"]).read_text())["units"].items() if o != "fp16"]
        for p in front["points"]
    ]
    assert quantized == [[analysis.error_model.units[0]], []]  # at the tight budget the one finite option; then FP16
    with pytest.raises(AnnaError, match="infeasible"):
        search(run_dir, [ratio - 0.001], model=model, measure=False, echo=None)


def test_linear_error_model_through_the_stage(run, tmp_path):
    """`--error-model linear` on the real tiny UNet: its own terms rank like the exact model's, it is validated
    on plans near the front, and search runs on it."""
    from anna.analyze.validate import spearman

    model, run_dir = run
    dirs = {}
    for mode in ("exact", "linear"):  # fresh folders: other tests edit the run's analysis
        dirs[mode] = tmp_path / mode
        dirs[mode].mkdir()
        for name in ("run.json", "calibration"):
            (dirs[mode] / name).symlink_to(run_dir / name, target_is_directory=(run_dir / name).is_dir())
    analyze(dirs["exact"], model=model, validate=0, progress=False, echo=None)
    exact = load_analysis(dirs["exact"], corrected=False).error_model
    lin_dir = dirs["linear"]
    analyze(lin_dir, model=model, validate=12, progress=False, echo=None, error_model="linear", probes=4)
    lin = load_analysis(lin_dir, corrected=False).error_model
    meta = json.loads((lin_dir / "analysis" / "error_model.json").read_text())
    assert meta["error_model"] == "linear" and meta["probes"] == 4
    alive = np.isfinite(lin.diag[:, 1:]) & (exact.diag[:, 1:] > 0)
    assert alive.sum() >= len(lin.units)  # at least one quantizing option survives per unit on average
    assert spearman(lin.diag[:, 1:][alive], exact.diag[:, 1:][alive]) > 0.9
    validation = json.loads((lin_dir / "analysis" / "validation.json").read_text())
    lo = load_analysis(lin_dir).size_ratio(load_analysis(lin_dir).sizes.argmin(1))
    assert validation["n_plans"] >= 10 and validation["spearman"] > 0.8
    assert lo - 1e-6 <= validation["size_range"][0] and validation["size_range"][1] <= lo + 0.10 + 1e-6
    front = json.loads(search(lin_dir, [round(lo + 0.01, 4)], model=model, echo=None).read_text())
    assert front["points"][0]["size_ratio"] <= round(lo + 0.01, 4) + 1e-9
    assert front["search"]["measured_plans"] >= 1 and "pick anna's plans" in front["search"]["seconds"]
