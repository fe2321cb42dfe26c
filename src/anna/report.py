"""`anna report --run DIR`: one self-contained `DIR/report.html` (images embedded as base64), PNGs in `DIR/report/`.

It reads what the stages left in the run folder and says "not available" for what is missing:
- `front.json`: `{"points": [{"budget", "size_ratio", "predicted_mse", "measured_mse", "plan"}], "baselines":
  {"uniform" | "greedy" | "fisher" | "random": [{"budget", "size_ratio", "predicted_mse", "measured_mse"}]}}`;
  without it, the predicted points of `plans/*.json`;
- `analysis/validation.json`: `{"spearman", "r2", "points": [{"predicted", "measured", "size_ratio"}]}`;
- `eval/metrics.json` (or `metrics.json`): the output of `anna evaluate`, with its images beside it;
- `selected.json` (or `eval/selected.json`): the output of `anna select`;
- `calibration/stats.json` and `run.json`: the per-unit input ranges and how they were calibrated.

The reading is in `anna.report_data`, the figures in `anna.report_plots`; this module writes the HTML.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anna.artifacts import write_text
from anna.errors import AnnaError
from anna.report_data import _first, _fmt, _num, _plans, _read_optional, activation_ranges
from anna.report_plots import (
    corrected_points,
    plot_activation_ranges,
    plot_grid,
    plot_pareto,
    plot_validation,
    validation_points,
)

REPORT_FILE = "report.html"
ASSETS_DIR = "report"


# HTML


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _na(what: str) -> str:
    return f'<p class="na">not available: {_e(what)}</p>'


def _cell(value: Any, reason: str | None, spec: str = ".4g") -> str:
    if _num(value) is None:
        return f'<td class="null" title="{_e(reason or "null")}">n/a</td>'
    return f"<td>{_fmt(value, spec)}</td>"


def _delta(value: Any, base: Any) -> str:
    a, b = _num(value), _num(base)
    return "<td>n/a</td>" if a is None or b is None else f"<td>{a - b:+.3f}</td>"


def metrics_table(metrics: Mapping[str, Any], selected_ckpt: str | None) -> str:
    """Original and every checkpoint per steps value: size ratio, CLIP (and delta), FID, MSE, component MSE."""
    originals = {o.get("steps"): o for o in metrics.get("original", [])}
    head = ("<tr><th>model</th><th>steps</th><th>size ratio</th><th>CLIP</th><th>ΔCLIP</th><th>FID</th>"
            "<th>MSE vs original (0-255)</th><th>component MSE</th></tr>")
    rows = []
    for s, o in sorted(originals.items()):
        rows.append(f'<tr class="orig"><td>original</td><td>{_e(s)}</td><td>1</td>'
                    f"{_cell(o.get('clip'), o.get('clip_reason'))}<td>—</td>"
                    f"{_cell(o.get('fid'), o.get('fid_reason'))}<td>0</td><td>0</td></tr>")
    entries = sorted(metrics.get("entries", []), key=lambda e: (_num(e.get("size_ratio")) or math.inf,
                                                                 str(e.get("name")), e.get("steps", 0)))
    for e in entries:
        o = originals.get(e.get("steps"), {})
        cls = ' class="selected"' if selected_ckpt and e.get("checkpoint") == selected_ckpt else ""
        rows.append(
            f"<tr{cls}><td>{_e(e.get('name'))}</td><td>{_e(e.get('steps'))}</td><td>{_fmt(e.get('size_ratio'), '.4f')}"
            f"</td>{_cell(e.get('clip'), e.get('clip_reason'))}{_delta(e.get('clip'), o.get('clip'))}"
            f"{_cell(e.get('fid'), e.get('fid_reason'))}{_cell(e.get('mse'), e.get('mse_reason'))}"
            f"{_cell(e.get('component_mse'), e.get('component_mse_reason'))}</tr>"
        )
    reasons = sorted({f"{k[:-7]}: {v}" for row in [*originals.values(), *entries] for k, v in row.items()
                      if k.endswith("_reason") and v and not str(v).startswith("not requested")})
    notes = "".join(f"<li>{_e(r)}</li>" for r in reasons)
    foot = f'<ul class="reasons">{notes}</ul>' if notes else ""
    return f'<table id="metrics-table">{head}{"".join(rows)}</table>{foot}'


def _plan_section(selected: Mapping[str, Any] | None) -> str:
    if not selected:
        return _na("no selection (run anna select; selected.json is missing)")
    units = selected.get("units") or {}
    fp16 = selected.get("fp16_units")
    parts = [f"<p><b>{_e(selected.get('name'))}</b> — size ratio {_fmt(selected.get('size_ratio'), '.4f')}, "
             f"component {_e(selected.get('component') or 'n/a')}, checkpoint <code>{_e(selected.get('checkpoint'))}"
             "</code></p>"]
    if fp16 is None:
        parts.append(_na(f"units kept in FP16 ({selected.get('plan_note') or 'no plan'})"))
    else:
        items = "".join(f"<li><code>{_e(u)}</code></li>" for u in fp16) or "<li>none</li>"
        parts.append(f'<h3>Units kept in FP16 ({len(fp16)})</h3><ul class="fp16" id="fp16-units">{items}</ul>')
    if units:
        counts = Counter(units.values())
        summary = ", ".join(f"{_e(o)}: {n}" for o, n in sorted(counts.items()))
        rows = "".join(f"<tr><td><code>{_e(u)}</code></td><td>{_e(o)}</td></tr>" for u, o in units.items())
        opened = " open" if len(units) <= 60 else ""
        parts.append(f"<h3>Option per unit ({len(units)} units; {summary})</h3><details{opened}><summary>table"
                     f'</summary><table id="unit-table"><tr><th>unit</th><th>option</th></tr>{rows}</table></details>')
    else:
        parts.append(_na(f"per-unit options ({selected.get('plan_note') or 'selected.json has no units'})"))
    return "".join(parts)


def _calibration_section(
    stats: Mapping[str, Any] | None, record: Mapping[str, Any] | None, assets: Path, top: int = 8
) -> str:
    ranges = activation_ranges(stats or {})
    if not stats or not ranges:
        return _na("calibration/stats.json (run anna calibrate)")
    record = record or {}
    summary, settings = record.get("summary") or {}, record.get("settings") or {}
    where = f"{len(record.get('prompts') or [])} prompts × {settings.get('steps')} steps" if settings else "its data"
    parts = [f'<p class="meta">{len(ranges)} units of {_e(stats.get("component") or "the model")} calibrated on '
             f"{_e(where)} in {_fmt(summary.get('seconds'), '.1f')} s. The ratio absmax / p99 shows the outliers "
             "that a percentile clipping cuts off.</p>"]
    path = plot_activation_ranges(ranges, assets / "activation-ranges.png")
    parts.append(f"<figure>{_img(path, 'activation ranges')}</figure>")
    worst = sorted(ranges, key=lambda r: r[2] / r[3] if r[3] > 0 else math.inf, reverse=True)[:top]
    rows = "".join(f"<tr><td><code>{_e(n)}</code></td><td>{_e(k)}</td><td>{a:.4g}</td><td>{q:.4g}</td>"
                   f"<td>{(a / q if q > 0 else math.inf):.3g}</td></tr>" for n, k, a, q, _ in worst)
    parts.append(f'<h3>Largest outliers</h3><table id="calibration-table"><tr><th>unit</th><th>kind</th>'
                 f"<th>absmax</th><th>p99 magnitude</th><th>absmax / p99</th></tr>{rows}</table>")
    nonfinite = stats.get("nonfinite") or []
    if nonfinite:
        items = "".join(f"<li><code>{_e(n.get('unit'))}</code> ({_e(n.get('activation'))}): {_e(n.get('count'))} "
                        f"values, first in item {_e(n.get('first_item'))}</li>" for n in nonfinite)
        parts.append(f'<p class="na">non-finite activations, excluded from the statistics:</p><ul>{items}</ul>')
    return "".join(parts)


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222}
h1{font-size:24px;margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#666;font-size:13px} .na{color:#a60;background:#fff7e6;border:1px solid #f0d9a8;padding:6px 10px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right} td:first-child,th:first-child{text-align:left}
tr.orig{background:#f3f6fa} tr.selected{background:#e8f7e8;font-weight:600}
td.null{color:#999} .reasons{font-size:12px;color:#865} .reason{font-size:13px;color:#333}
img{max-width:100%} ul.fp16{columns:2;column-gap:32px;font-size:12px} ul.fp16 li{overflow-wrap:anywhere}
figure{margin:12px 0} figcaption{font-size:13px;color:#444}
#unit-table td{text-align:left;font-size:12px}
"""


def build_report(run_dir: str | Path, *, max_grids: int = 12, out: str | Path | None = None) -> Path:
    """Write `run_dir/report.html` (and its PNGs in `run_dir/report/`) from whatever the run folder holds."""
    run = Path(run_dir)
    if not run.is_dir():
        raise AnnaError(f"run folder not found: {run}")
    assets = run / ASSETS_DIR
    notes: list[str] = []
    front = _read_optional(run / "front.json", "front", notes)
    plans = _plans(run, notes)
    validation = _read_optional(run / "analysis" / "validation.json", "validation", notes)
    metrics_path = _first(run, ("eval/metrics.json", "metrics.json"))
    metrics = _read_optional(metrics_path, "evaluation metrics", notes) if metrics_path else None
    sel_path = _first(run, ("selected.json", "eval/selected.json"))
    selected = _read_optional(sel_path, "selection", notes) if sel_path else None
    eval_dir = metrics_path.parent if metrics_path else None
    stats = _read_optional(run / "calibration" / "stats.json", "calibration statistics", notes)
    record = _read_optional(run / "run.json", "run record", notes)

    model = (metrics or {}).get("model") or (plans[0].get("model") if plans else None) or "unknown model"
    body = [f"<h1>anna report — {_e(model)}</h1>",
            f'<p class="meta">run {_e(run.resolve())} · generated {_dt.datetime.now().isoformat(timespec="seconds")}'
            "</p>"]
    body += [f'<p class="na">{_e(n)}</p>' for n in notes]

    body.append("<h2>Selected checkpoint</h2>")
    if selected:
        given = {k: v for k, v in (selected.get("thresholds") or {}).items() if v is not None}
        thr = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in given.items()) or "none"
        body.append(f"<p><b>{_e(selected.get('name'))}</b>: size ratio {_fmt(selected.get('size_ratio'), '.4f')}; "
                    f"thresholds: {_e(thr)}</p><p class=\"reason\">{_e(selected.get('reason', ''))}</p>")
    else:
        body.append(_na("no selection (selected.json is missing)"))

    body.append('<h2 id="pareto">Pareto front</h2>')
    pareto = plot_pareto(front, plans, metrics, selected, assets / "pareto.png")
    if pareto:
        body.append(f"<figure>{_img(pareto, 'Pareto front')}</figure>")
        if front is None:
            body.append(_na("front.json (measured MSE and baselines); showing the plans' predicted MSE"))
        elif not (front.get("baselines") or {}):
            body.append(_na("baselines (front.json has none)"))
    else:
        body.append(_na("front.json and plans/*.json (no size/MSE points)"))

    body.append('<h2 id="validation">Predicted vs measured MSE</h2>')
    val = validation_points(validation, front)
    if val and val[0]:
        pts, rho, r2, source = val
        corr = corrected_points(validation)
        path = plot_validation(pts, rho, r2, assets / "validation.png", corr[0] if corr else None)
        caption = f"{len(pts)} points from {_e(source)}: Spearman ρ = {_fmt(rho, '.3f')}, R² = {_fmt(r2, '.3f')}"
        if corr:
            c = corr[1]
            caption += (
                f". Fitted correction MSE ≈ {c['diag_scale']:.3f} × own + {c['cross_scale']:.2f} × cross terms: "
                f"R² = {_fmt(c['r2'], '.3f')} (out of sample {_fmt(c['r2_out_of_sample'], '.3f')}), "
                f"Spearman ρ = {_fmt(c['spearman'], '.3f')}"
            )
        body.append(f"<figure>{_img(path, 'predicted vs measured MSE')}<figcaption>{caption}</figcaption></figure>")
    else:
        body.append(_na("analysis/validation.json (and no measured MSE in front.json)"))

    body.append('<h2 id="metrics">Image metrics</h2>')
    if metrics:
        settings = metrics.get("settings") or {}
        body.append(f'<p class="meta">{_e(metrics.get("num_prompts"))} prompts ({_e(metrics.get("prompts"))}), seed '
                    f"{_e(metrics.get('seed'))}, guidance {_e(settings.get('guidance'))}, "
                    f"{_e(settings.get('width'))}×{_e(settings.get('height'))}; CLIP "
                    f"{_e(metrics.get('clip_model') or 'n/a')}; FID reference {_e(metrics.get('fid_reference'))}, "
                    f"features {_e(metrics.get('fid_feature') or 'n/a')}</p>")
        body.append(metrics_table(metrics, (selected or {}).get("checkpoint")))
    else:
        body.append(_na("eval/metrics.json (run anna evaluate --out RUN/eval)"))

    body.append('<h2 id="plan">Selected plan</h2>')
    body.append(_plan_section(selected))

    body.append('<h2 id="calibration">Calibration</h2>')
    body.append(_calibration_section(stats, record, assets))

    body.append('<h2 id="grids">Images</h2>')
    body.append(_grids(metrics, selected, eval_dir, assets, max_grids))

    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>anna report — {_e(model)}</title>'
           f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
    target = Path(out) if out else run / REPORT_FILE
    write_text(target, doc)
    return target


def _grids(metrics: Mapping[str, Any] | None, selected: Mapping[str, Any] | None, eval_dir: Path | None,
           assets: Path, max_grids: int) -> str:
    if not metrics or eval_dir is None:
        return _na("image grids (no evaluation)")
    entries = metrics.get("entries", [])
    sel = (selected or {}).get("checkpoint")
    chosen = [e for e in entries if sel and e.get("checkpoint") == sel]
    note = ""
    if not chosen and entries:
        smallest = min(entries, key=lambda e: _num(e.get("size_ratio")) or math.inf)
        chosen = [e for e in entries if e.get("checkpoint") == smallest.get("checkpoint")]
        note = _na(f"selection; showing the smallest evaluated checkpoint, {smallest.get('name')}")
    originals = {o.get("steps"): o for o in metrics.get("original", [])}
    by_steps = {e.get("steps"): e for e in chosen}
    fp8 = {e.get("steps"): e for e in entries if e.get("name") == "all-fp8" and e not in chosen}
    steps = list(metrics.get("steps") or sorted(originals))
    prompts = list(metrics.get("prompt_texts") or [])
    n = len(prompts) or int(metrics.get("num_prompts") or 0)
    if n == 0:
        return _na("image grids (no prompts)")
    name = chosen[0].get("name") if chosen else None
    also = " and the all-FP8 plan" if fp8 else ""
    out = [note, f'<p class="meta">columns: original, {_e(name or "no checkpoint")}{also} at each steps value; '
           f"{min(n, max_grids)} of {n} prompts</p>"]
    for i in range(min(n, max_grids)):
        cells: list[tuple[str, Path | None]] = []
        for s in steps:
            o = originals.get(s)
            cells.append((f"original · {s} step(s)", eval_dir / o["images"] / f"{i:04d}.png" if o else None))
            for e in (by_steps.get(s), fp8.get(s)):
                if e is not None:
                    per = e.get("mse_per_image") or []
                    mse = f"\nMSE {per[i]:.3g}" if i < len(per) and _num(per[i]) is not None else ""
                    cells.append((f"{e.get('name')} · {s} step(s){mse}", eval_dir / e["images"] / f"{i:04d}.png"))
        prompt = prompts[i] if i < len(prompts) else f"prompt {i}"
        path = plot_grid(cells, prompt, assets / f"grid-{i:04d}.png")
        out.append(f'<figure class="grid">{_img(path, prompt)}<figcaption>{i}: {_e(prompt)}</figcaption></figure>')
    return "".join(out)
