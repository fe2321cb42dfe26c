"""`evaluate` end to end on tiny-sdxl with real checkpoints: metrics.json, images, cached originals, offline nulls."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anna.artifacts import read_json
from anna.cli import main
from anna.evaluate.evaluate import EvalConfig, evaluate, parse_metrics, parse_steps, published_split
from anna.evaluate.metrics import image_mse

PROMPTS = ["a red bus next to a building", "a bowl of fruit"]


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.slow
def test_evaluate_end_to_end(tmp_path, tiny_checkpoints, tiny_clip, fid_script):
    out = tmp_path / "eval"
    small, large = sorted(tiny_checkpoints, key=lambda p: read_json(p / "plan.json")["size_ratio"])
    cfg = EvalConfig(steps=(1, 2), height=32, width=32, clip_model=str(tiny_clip), fid_weights=str(fid_script))
    lines: list[str] = []
    res = evaluate("tiny-sdxl", [large], PROMPTS, out, cfg, prompts_spec="two prompts", echo=lines.append,
                   progress=False)

    data = read_json(out / "metrics.json")
    assert data == res | {"format_version": 1}
    assert data["model"] == "tiny-sdxl" and data["prompts"] == "two prompts" and data["steps"] == [1, 2]
    assert [o["steps"] for o in data["original"]] == [1, 2]
    for o in data["original"]:
        assert o["fid"] == 0.0 and o["clip"] is not None and o["clip_reason"] is None
    assert [(e["name"], e["steps"]) for e in data["entries"]] == [(large.name, 1), (large.name, 2)]
    for e in data["entries"]:
        assert e["size_ratio"] == pytest.approx(read_json(large / "plan.json")["size_ratio"])
        assert e["mse"] > 0 and e["component_mse"] > 0 and e["clip"] is not None and e["fid"] is not None
        assert e["clip_reason"] is e["fid_reason"] is e["component_mse_reason"] is None
        assert len(e["fp16_units"]) > 0 and e["component"] == "unet"
        folder = out / e["images"]
        orig = out / "original" / f"steps-{e['steps']}"
        per = [image_mse(_png(orig / f"{i:04d}.png"), _png(folder / f"{i:04d}.png")) for i in range(len(PROMPTS))]
        assert e["mse_per_image"] == pytest.approx(per) and e["mse"] == pytest.approx(np.mean(per))
        assert (folder / "prompts.txt").read_text().splitlines() == PROMPTS
    first = {e["steps"]: e for e in data["entries"]}

    # Again into the same folder, with both checkpoints and the default CLIP and FID, which are missing offline:
    # the originals come from the cache, clip and fid are null with one-line reasons, the rest completes.
    stamp = (out / "original" / "steps-2" / "0000.png").stat().st_mtime_ns
    lines = []
    res = evaluate("tiny-sdxl", [large, small], PROMPTS, out, EvalConfig(steps=(2,), height=32, width=32),
                   echo=lines.append, progress=False)
    assert (out / "original" / "steps-2" / "0000.png").stat().st_mtime_ns == stamp
    assert sum("cached" in line for line in lines) == 1
    assert [(e["name"], e["steps"]) for e in res["entries"]] == [(large.name, 2), (small.name, 2)]
    for row in res["entries"] + res["original"]:
        assert row["clip"] is None and row["fid"] is None
        assert "offline" in row["clip_reason"] and "\n" not in row["clip_reason"]
        assert "--fid-weights" in row["fid_reason"] and "\n" not in row["fid_reason"]
    for e in res["entries"]:
        assert e["mse"] > 0 and e["component_mse"] > 0
        if e["name"] == large.name:  # deterministic: same images, same captured component inputs
            assert e["mse"] == first[e["steps"]]["mse"]
            assert e["component_mse"] == pytest.approx(first[e["steps"]]["component_mse"], rel=1e-9)


def test_cli_evaluate_bad_input_is_one_line(tmp_path, capsys):
    base = ["evaluate", "--model", "tiny-sdxl", "--prompts", "x.txt", "--out", str(tmp_path / "o")]
    (tmp_path / "p.txt").write_text("a cat\n")
    cases = [
        (base[:4] + [str(tmp_path / "p.txt")] + base[5:] + ["--steps", "0,1"], "bad --steps"),
        (base[:4] + [str(tmp_path / "p.txt")] + base[5:] + ["--metrics", "mse,lpips"], "unknown metric"),
        (base[:4] + [str(tmp_path / "p.txt")] + base[5:] + ["--checkpoint", str(tmp_path / "nope")],
         "checkpoint not found"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and err.count("\n") == 1


def test_parsers_and_published_split():
    assert parse_steps("1,2") == (1, 2) and parse_steps([4]) == (4,)
    assert parse_metrics("fid, mse") == ("mse", "fid")
    assert published_split("c.tsv") == ("c.tsv:1-50", "c.tsv:1-100")


def test_cli_evaluate_original_only(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a cat\n")
    main(["evaluate", "--model", "tiny-sdxl", "--prompts", str(tmp_path / "p.txt"), "--metrics", "mse,fid",
          "--steps", "1", "--height", "32", "--width", "32", "--quiet", "--out", str(tmp_path / "o")])
    assert "0 entries, 1 original rows" in capsys.readouterr().out
    data = read_json(tmp_path / "o" / "metrics.json")
    (row,) = data["original"]
    assert row["clip"] is None and row["clip_reason"].startswith("not requested")
    assert row["fid"] is None and "\n" not in row["fid_reason"]  # one image, or no Inception: either way a reason
    assert (tmp_path / "o" / "original" / "steps-1" / "0000.png").is_file()
