"""The report: self-contained HTML with the metrics table, the plots and one image grid per prompt; missing pieces
are marked "not available"."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

from anna.artifacts import write_json
from anna.cli import main
from anna.report import build_report

PROMPTS = ["a red bus <b>", "a bowl of fruit", "a clock tower"]


class Parsed(HTMLParser):
    """Tables (id -> rows of cell texts), images (alt, src) and the 'not available' notes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[tuple[str, str]] = []
        self.na: list[str] = []
        self.external: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._na: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id", f"table{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "img":
            self.images.append((a.get("alt", ""), a.get("src", "")))
        elif tag == "p" and "na" in (a.get("class") or "").split():
            self._na = []
        if tag in ("link", "script") or (tag == "img" and not a.get("src", "").startswith("data:")):
            self.external.append(tag)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "p" and self._na is not None:
            self.na.append("".join(self._na))
            self._na = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._na is not None:
            self._na.append(data)


def parse(path: Path) -> Parsed:
    p = Parsed()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _images(folder: Path, n: int, value: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((16, 16, 3), (value + 20 * i) % 256, np.uint8)).save(folder / f"{i:04d}.png")


def make_run(run: Path) -> None:
    ev = run / "eval"
    for s in (1, 2):
        _images(ev / "original" / f"steps-{s}", 3, 10 * s)
        for name, v in (("size-0.50", 50), ("size-0.60", 90)):
            _images(ev / name / f"steps-{s}", 3, v + s)
    entries = [
        {"checkpoint": f"/ck/{name}", "name": name, "steps": s, "size_ratio": size, "mse": 10.0 * s / size,
         "mse_reason": None, "mse_per_image": [1.0, 2.0, 3.0], "component_mse": 1e-3 * s, "clip": 30.0 - s,
         "clip_reason": None, "fid": None, "fid_reason": "FID needs torch-fidelity", "images": f"{name}/steps-{s}"}
        for name, size in (("size-0.50", 0.5), ("size-0.60", 0.6)) for s in (1, 2)
    ]
    original = [{"steps": s, "images": f"original/steps-{s}", "clip": 31.0, "clip_reason": None, "fid": None,
                 "fid_reason": "FID needs torch-fidelity"} for s in (1, 2)]
    write_json(ev / "metrics.json", {"model": "tiny-sdxl", "prompts": "p.txt", "num_prompts": 3,
                                     "prompt_texts": PROMPTS, "seed": 0, "steps": [1, 2], "entries": entries,
                                     "original": original, "settings": {"guidance": 0.0, "height": 16, "width": 16}})
    pts = [{"budget": b, "size_ratio": b, "predicted_mse": 1e-3 / b, "measured_mse": 1.1e-3 / b, "plan": "p"}
           for b in (0.5, 0.55, 0.6)]
    write_json(run / "front.json", {"points": pts, "baselines": {
        "uniform": [{"budget": b, "size_ratio": b, "predicted_mse": 3e-3 / b, "measured_mse": 3.3e-3 / b}
                    for b in (0.5, 0.6)]}})
    write_json(run / "analysis" / "validation.json", {"spearman": 0.9, "r2": 0.8, "points": [
        {"predicted": p["predicted_mse"], "measured": p["measured_mse"], "size_ratio": p["size_ratio"]} for p in pts]})
    def act(absmax: float, p1: float, p99: float) -> dict:
        return {"min": -absmax, "max": absmax, "absmax": absmax,
                "percentiles": {"1": p1, "5": p1 / 2, "10": p1 / 4, "90": p99 / 4, "95": p99 / 2, "99": p99}}

    units = {"conv_in": {"kind": "conv", "input": act(4.0, -2.0, 2.0)},
             "down.0": {"kind": "linear", "input": act(300.0, -1.0, 3.0)},
             "mid.attn1": {"kind": "attention", "input": act(8.0, -0.5, 1.0), "p": act(1.0, 0.0, 0.5)},
             "up.0": {"kind": "conv", "input": None}}
    write_json(run / "calibration" / "stats.json", {"model": "tiny-sdxl", "component": "unet", "nonfinite": [],
                                                   "units": units})
    write_json(run / "run.json", {"model": "tiny-sdxl", "prompts": PROMPTS, "settings": {"steps": 4},
                                  "summary": {"seconds": 1.25}})
    write_json(run / "selected.json", {"checkpoint": "/ck/size-0.60", "name": "size-0.60", "size_ratio": 0.6,
                                       "component": "unet", "reason": "smallest that passes",
                                       "thresholds": {"max_mse": 40.0},
                                       "fp16_units": ["conv_in", "mid.attn1"],
                                       "units": {"conv_in": "fp16", "down.0": "fp8-moderate", "mid.attn1": "fp16"}})


def test_report_has_metrics_table_plots_and_grids(tmp_path):
    make_run(tmp_path)
    path = build_report(tmp_path)
    assert path == tmp_path / "report.html"
    doc = parse(path)
    assert not doc.external  # self-contained: every image is a data URI, no scripts or stylesheets
    table = doc.tables["metrics-table"]
    assert table[0][:4] == ["model", "steps", "size ratio", "CLIP"]
    rows = [(r[0], r[1]) for r in table[1:]]
    assert rows == [("original", "1"), ("original", "2"), ("size-0.50", "1"), ("size-0.50", "2"),
                    ("size-0.60", "1"), ("size-0.60", "2")]
    by = {(r[0], r[1]): r for r in table[1:]}
    assert by[("size-0.60", "2")][3] == "28" and by[("size-0.60", "2")][4] == "-3.000"  # CLIP and its delta
    assert by[("size-0.60", "2")][5] == "n/a" and by[("size-0.60", "1")][6] == "16.67"  # null FID; MSE
    assert [r[1] for r in doc.tables["unit-table"][1:]] == ["fp16", "fp8-moderate", "fp16"]
    alts = [alt for alt, _ in doc.images]
    assert alts[:3] == ["Pareto front", "predicted vs measured MSE", "activation ranges"] and alts[3:] == PROMPTS
    # the units without input statistics are left out; the largest absmax / p99 first
    assert [(r[0], r[1], r[4]) for r in doc.tables["calibration-table"][1:]] == [
        ("down.0", "linear", "100"), ("mid.attn1", "attention", "8"), ("conv_in", "conv", "2")]
    assert "3 units of unet calibrated on 3 prompts × 4 steps in 1.2 s" in path.read_text()
    for _, src in doc.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not doc.na  # everything was there
    assert "FID needs torch-fidelity" in path.read_text() and "a red bus &lt;b&gt;" in path.read_text()
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "activation-ranges.png", "grid-0000.png", "grid-0001.png", "grid-0002.png", "pareto.png", "validation.png"]


def test_report_marks_missing_pieces(tmp_path, capsys):
    main(["report", "--run", str(tmp_path)])
    assert "report.html" in capsys.readouterr().out
    doc = parse(tmp_path / "report.html")
    assert len(doc.na) >= 6 and not doc.images
    text = " ".join(doc.na)
    for what in ("selected.json", "front.json", "validation.json", "metrics.json", "image grids", "stats.json"):
        assert what in text

    # plans alone: the predicted points are plotted, the rest noted
    head = {"model": "m", "component": "unet", "units": {}}
    write_json(tmp_path / "plans" / "size-0.500.json", {**head, "size_ratio": 0.5, "bytes": 50, "predicted_mse": 2e-3})
    write_json(tmp_path / "plans" / "size-0.600.json", {**head, "size_ratio": 0.6, "bytes": 60, "predicted_mse": 1e-3})
    doc = parse(build_report(tmp_path))
    assert [alt for alt, _ in doc.images] == ["Pareto front"]
    assert any("showing the plans' predicted MSE" in n for n in doc.na)


def test_report_lists_nonfinite_activations(tmp_path):
    act = {"min": -1.0, "max": 2.0, "absmax": 2.0, "percentiles": {k: 0.5 for k in ("1", "5", "10", "90", "95", "99")}}
    nonfinite = [{"unit": "mid.attn1", "activation": "p", "count": 12, "first_item": 3}]
    units = {"mid.attn1": {"kind": "attention", "input": act}}
    write_json(tmp_path / "calibration" / "stats.json", {"component": "unet", "nonfinite": nonfinite, "units": units})
    doc = parse(build_report(tmp_path))
    assert "activation ranges" in [alt for alt, _ in doc.images]
    assert "non-finite activations, excluded from the statistics:" in doc.na
    assert "<code>mid.attn1</code> (p): 12 values, first in item 3" in (tmp_path / "report.html").read_text()
    assert [r[4] for r in doc.tables["calibration-table"][1:]] == ["4"]
