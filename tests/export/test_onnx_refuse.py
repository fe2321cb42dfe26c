"""ONNX QDQ export never quietly turns a plan's option into another: an option it cannot express is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anna.adapters import from_module
from anna.errors import AnnaError
from anna.export.onnx_qdq import check_expressible, export_generic_onnx
from anna.plan import Plan


def _plan(units: dict[str, str]) -> Plan:
    return Plan(model="Sequential", component="model", units=units, bag=sorted(set(units.values())), bytes=1,
                size_ratio=1.0)


def test_an_fp8_option_is_refused_with_the_units_it_names(tmp_path):
    model = from_module(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), [{"input": torch.randn(2, 4)}],
                        forward=lambda m, b: m(b["input"]))
    plan = _plan({"0": "qdq-u8u16", "2": "fp8-moderate"})
    with pytest.raises(AnnaError, match=r"cannot express option\(s\) fp8-moderate \(1 unit\(s\), e.g. '2'\).*--bag"):
        export_generic_onnx(model, tmp_path / "out", plan=plan, echo=None)
    assert not (tmp_path / "out").exists()  # refused before any work
    check_expressible(_plan({"0": "qdq-u8u16", "2": "fp16"}))  # what it can express passes
    check_expressible(None)
