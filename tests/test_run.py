from anna.run import feasible_sizes


def test_feasible_sizes_clip_and_shift():
    assert feasible_sizes([0.5, 0.55, 0.6], 0.5209) == [0.521, 0.55, 0.6]
    # a component whose smallest plan is above the whole sweep sweeps the same span above it
    assert feasible_sizes([0.5, 0.55, 0.6], 0.7939) == [0.794, 0.844, 0.894]
    assert feasible_sizes([0.5], 0.7939) == [0.794]


def test_run_loads_the_base_model_once_and_matches_fresh_loads(tmp_path, monkeypatch):
    """`anna run` loads tiny-sdxl once for every stage and every checkpoint; exporting and evaluating on that one
    pipeline (each checkpoint undone after it) gives exactly what fresh loads per checkpoint give (the old way)."""
    import json

    import torch

    from anna.adapters import load_model, tiny
    from anna.evaluate.evaluate import EvalConfig, evaluate
    from anna.export.checkpoint import export_checkpoint, read_checkpoint
    from anna.run import RunConfig, run_all

    loads = []
    real = tiny.load
    monkeypatch.setattr(tiny, "load", lambda: loads.append(1) or real())
    run_dir = tmp_path / "run"
    cfg = RunConfig(model="tiny-sdxl", run_dir=str(run_dir), calib=2, test=2, component="text_encoder",
                    sizes=(0.90, 0.95), steps=(1,), metrics=("mse",), cache_samples=2, validate=0)
    report = run_all(cfg, echo=lambda _s: None, progress=False)
    assert report.is_file()
    assert len(loads) == 1
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    ckpts = [run_dir / "checkpoints" / n for n in ("size-0.900", "size-0.950")]
    assert [e["name"] for e in metrics["entries"]] == ["size-0.900", "size-0.950", "all-fp8"]
    entries = metrics["entries"][:2]  # the sweep's checkpoints (all-fp8 is the report's baseline)

    # the old way: every checkpoint exported from, and evaluated on, a freshly loaded model
    fresh = []
    for ck in ckpts:
        out = tmp_path / "fresh" / ck.name
        export_checkpoint(run_dir, run_dir / "plans" / f"{ck.name}.json", out, echo=None)
        (plan_a, a), (plan_b, b) = read_checkpoint(out), read_checkpoint(ck)  # (safetensors orders metadata freely)
        assert plan_a == plan_b and list(a) == list(b)
        assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
        fresh.append(out)
    old = evaluate(lambda: load_model("tiny-sdxl"), fresh, metrics["prompt_texts"], tmp_path / "eval-fresh",
                   EvalConfig(metrics=("mse",), steps=(1,)), echo=None, progress=False)
    keys = ("mse", "mse_per_image", "component_mse", "size_ratio")
    assert [{k: e[k] for k in keys} for e in old["entries"]] == [{k: e[k] for k in keys} for e in entries]
    assert all(e["mse"] > 0 for e in entries)
