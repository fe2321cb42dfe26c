"""Plan file names: budgets that differ never share a file, and a sweep that names a budget twice is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch import nn

from anna.adapters import from_module
from anna.analyze.error_model import ErrorModel
from anna.artifacts import write_json, write_tensors
from anna.budgets import plan_name, plan_names
from anna.errors import AnnaError
from anna.inventory import build_inventory
from anna.search import search


def test_plan_name_keeps_three_decimals_and_adds_digits_only_when_needed() -> None:
    assert plan_name(0.501) == "size-0.501"
    assert plan_name(0.5) == "size-0.500"
    assert plan_name(0.5012) == "size-0.5012"
    assert plan_name(0.50149) == "size-0.50149"
    ratios = [round(0.5 + k * 0.0001, 6) for k in range(200)] + [0.5 + k / 7000 for k in range(70)]
    assert len(set(map(plan_name, ratios))) == len(set(ratios))


def test_plan_names_refuses_a_budget_given_twice() -> None:
    assert plan_names([0.5, 0.5004]) == ["size-0.500", "size-0.5004"]
    with pytest.raises(AnnaError, match="given twice"):
        plan_names([0.5, 0.6, 0.5])


@pytest.fixture
def run(tmp_path):
    """A run folder with a hand-made error model for two Linear units (fp16 or fp8-absmax each)."""
    model = from_module(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)), [], name="toy")
    options = ["fp16", "fp8-absmax"]
    inv = build_inventory(model, options=options)
    sizes = np.array([[u.bytes[o] for o in options] for u in inv.units], dtype=np.int64)
    em = ErrorModel(inv.names, options, np.array([[0.0, 1e-3], [0.0, 3e-3]]), np.zeros((2, 2, 4), np.float32), 10)
    out = tmp_path / "analysis"
    write_tensors(out / "error_model.safetensors", em.to_tensors())
    base = inv.total_bytes_fp16 - int(sizes[:, 0].sum())
    write_json(out / "error_model.json", {"model": "toy", "component": inv.component, "units": inv.names,
                                          "options": options, "n_elements": 10, "sizes": sizes.tolist(),
                                          "base_bytes": base, "total_bytes_fp16": inv.total_bytes_fp16})
    lo = (base + sizes[:, 1].sum()) / inv.total_bytes_fp16
    return model, tmp_path, float(lo)


def test_budgets_that_round_alike_get_their_own_plan_files(run) -> None:
    model, run_dir, lo = run
    a, b = round(lo, 3) + 0.0102, round(lo, 3) + 0.0104  # both read x.xx0 with 3 decimals
    assert f"{a:.3f}" == f"{b:.3f}"
    front = json.loads(search(run_dir, [a, b], model=model, measure=False, baselines=False, echo=None).read_text())
    paths = [p["plan"] for p in front["points"]]
    assert len(set(paths)) == 2
    for p in front["points"]:
        assert json.loads((run_dir / p["plan"]).read_text())["budget"] == p["budget"]
    with pytest.raises(AnnaError, match="given twice"):
        search(run_dir, [a, b, a], model=model, measure=False, baselines=False, echo=None)
