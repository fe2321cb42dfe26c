"""The report's figures: Pareto front, predicted against measured MSE, image grids, activation ranges (matplotlib,
imported when a figure is drawn; moved from `anna.report`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from anna.report_data import _fmt, _num

BASELINE_COLORS = {"uniform": "#7f7f7f", "greedy": "#ff7f0e", "fisher": "#2ca02c", "random": "#9467bd"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _xy(points: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = sorted(
        ((_num(p.get("size_ratio")), _num(p.get(key))) for p in points),
        key=lambda t: (t[0] is None, t[0] or 0.0),
    )
    pts = [(x, y) for x, y in pts if x is not None and y is not None and y > 0]
    return [x for x, _ in pts], [y for _, y in pts]


def plot_pareto(
    front: Mapping[str, Any] | None,
    plans: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any] | None,
    selected: Mapping[str, Any] | None,
    path: Path,
) -> Path | None:
    """Size ratio vs predicted and measured MSE of the front, the baselines on the same axes. None: nothing to plot."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    drawn = 0
    points = list((front or {}).get("points") or []) or [
        {"size_ratio": p.get("size_ratio"), "predicted_mse": p.get("predicted_mse")} for p in plans
    ]
    src = "front" if (front or {}).get("points") else "plans"
    for key, style, label in (("predicted_mse", "--o", "predicted"), ("measured_mse", "-o", "measured")):
        x, y = _xy(points, key)
        if x:
            fill = "none" if key == "predicted_mse" else "#1f77b4"
            ax.plot(x, y, style, color="#1f77b4", mfc=fill, ms=5, lw=1.6, label=f"anna {label} ({src})")
            drawn += 1
    for method, pts in ((front or {}).get("baselines") or {}).items():
        color = BASELINE_COLORS.get(method)
        for key, style, label in (("predicted_mse", "--s", "predicted"), ("measured_mse", "-s", "measured")):
            x, y = _xy(pts or [], key)
            if x:
                ax.plot(x, y, style, color=color, mfc="none" if key == "predicted_mse" else color, ms=4, lw=1,
                        alpha=0.85, label=f"{method} {label}")
                drawn += 1
    for s in (metrics or {}).get("steps", []):
        entries = [e for e in (metrics or {}).get("entries", []) if e.get("steps") == s]
        x, y = _xy([{"size_ratio": e.get("size_ratio"), "v": e.get("component_mse")} for e in entries], "v")
        if x:
            ax.plot(x, y, "x", ms=7, mew=1.5, label=f"component MSE on test prompts, {s} step(s)")
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    sel = _num((selected or {}).get("size_ratio"))
    if sel is not None:
        ax.axvline(sel, color="#d62728", ls=":", lw=1.5, label=f"selected ({sel:.4f})")
    ax.set_yscale("log")
    ax.set_xlabel("size ratio (checkpoint bytes / FP16 bytes)")
    ax.set_ylabel("component output MSE")
    ax.set_title("Pareto front: size vs MSE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    return _save(plt, fig, path)


def _spearman_r2(pred: Sequence[float], meas: Sequence[float]) -> tuple[float | None, float | None]:
    if len(pred) < 3:
        return None, None
    from anna.analyze.validate import r_squared, spearman

    rho, r2 = spearman(pred, meas), r_squared(pred, meas)
    return (rho if math.isfinite(rho) else None), (r2 if math.isfinite(r2) else None)


def validation_points(
    validation: Mapping[str, Any] | None, front: Mapping[str, Any] | None
) -> tuple[list[tuple[float, float]], float | None, float | None, str] | None:
    """(points, spearman, r2, source): from analysis/validation.json, else from the front's measured points."""
    if validation and validation.get("points"):
        pts = [(_num(p.get("predicted")), _num(p.get("measured"))) for p in validation["points"]]
        pts = [(a, b) for a, b in pts if a is not None and b is not None]
        return pts, _num(validation.get("spearman")), _num(validation.get("r2")), "analysis/validation.json"
    pts = [(_num(p.get("predicted_mse")), _num(p.get("measured_mse"))) for p in (front or {}).get("points") or []]
    pts = [(a, b) for a, b in pts if a is not None and b is not None]
    if not pts:
        return None
    rho, r2 = _spearman_r2([a for a, _ in pts], [b for _, b in pts])
    return pts, rho, r2, "front.json (computed by the report)"


def corrected_points(validation: Mapping[str, Any] | None) -> tuple[list[tuple[float, float]], dict] | None:
    """(corrected prediction, measured) per validation plan, from the fitted correction, when there is one."""
    c = (validation or {}).get("correction")
    if not c:
        return None
    pts = [
        (c["diag_scale"] * p["own"] + c["cross_scale"] * p["cross"], p["measured"])
        for p in validation.get("points", [])
        if p.get("own") is not None and p.get("cross") is not None
    ]
    return (pts, c) if pts else None


def plot_validation(
    pts: Sequence[tuple[float, float]],
    rho: float | None,
    r2: float | None,
    path: Path,
    corrected: Sequence[tuple[float, float]] | None = None,
) -> Path:
    """Predicted vs measured MSE with the y = x line, titled with the correlation; the corrected model beside it."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    x, y = [a for a, _ in pts], [b for _, b in pts]
    ax.scatter(x, y, s=22, color="#1f77b4", edgecolor="k", lw=0.4, label="additive model")
    if corrected:
        ax.scatter([a for a, _ in corrected], [b for _, b in corrected], s=22, color="#ff7f0e", marker="^",
                   edgecolor="k", lw=0.4, label="with fitted correction")
        x, y = x + [a for a, _ in corrected], y + [b for _, b in corrected]
    positive = [v for v in x + y if v > 0]
    if positive and len(positive) == len(x) + len(y):
        lo, hi = min(positive), max(positive)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="measured = predicted")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log range collide
    ax.set_xlabel("predicted MSE")
    ax.set_ylabel("measured MSE")
    ax.set_title(f"Spearman ρ = {_fmt(rho, '.3f')}, R² = {_fmt(r2, '.3f')}")
    ax.grid(True, which="both", alpha=0.3)
    return _save(plt, fig, path)


def _thumb(path: Path, size: int):
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        return im.copy()


def plot_grid(cells: Sequence[tuple[str, Path | None]], prompt: str, path: Path, size: int = 256) -> Path:
    """One row of images (title, file), the prompt above them. A missing file leaves a labelled empty cell."""
    plt = _plt()
    n = len(cells)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.1), dpi=100, squeeze=False, layout="constrained")
    for ax, (title, file) in zip(axes[0], cells, strict=True):
        if file is not None and file.is_file():
            thumb = _thumb(file, size)
            ax.imshow(thumb, interpolation="nearest" if max(thumb.size) < 128 else "antialiased")
        else:
            ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    import textwrap

    fig.suptitle(textwrap.shorten(prompt, 110), fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_activation_ranges(ranges: Sequence[tuple[str, str, float, float, float]], path: Path) -> Path:
    """Per unit (x, in model order), on a log scale: the input's absmax and its p99 and p90 magnitudes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4), dpi=110)
    x = list(range(len(ranges)))
    floor = min([v for r in ranges for v in r[2:] if v > 0] or [1.0]) / 2  # zeros drawn at the floor of the axis
    for i, (label, color, marker) in enumerate(
        (("absmax", "#d62728", "o"), ("p1/p99 magnitude", "#1f77b4", "s"), ("p10/p90 magnitude", "#9ecae1", "."))
    ):
        ax.scatter(x, [max(r[2 + i], floor) for r in ranges], s=14, color=color, marker=marker, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("unit (model order)")
    ax.set_ylabel("|input activation|")
    ax.set_title("Calibrated input ranges per unit")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(plt, fig, path)
