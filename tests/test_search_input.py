"""search's input: sweep strings (malformed, oversized) and non-finite trials, which never get blamed on the budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anna.analyze.error_model import ErrorModel, reference_outputs
from anna.analyze.stage import Analysis
from anna.budgets import MAX_BUDGETS, parse_sizes
from anna.errors import AnnaError
from anna.search import _solve_all


@pytest.mark.parametrize("sizes", ["0.5.1:0.6:0.01", "a:b:c", "0.5:0.6", "1e-1:0.6:0.01", ":0.6:0.01", "0.5::0.1"])
def test_malformed_sweeps(sizes):
    with pytest.raises(AnnaError, match="must read START:STOP:STEP"):
        parse_sizes(sizes=sizes)


def test_sweep_size_limit():
    assert len(parse_sizes(sizes="0.001:1.0:0.001")) == MAX_BUDGETS == 1000
    with pytest.raises(AnnaError, match="asks for 100,001 budgets; a sweep has at most 1,000"):
        parse_sizes(sizes="0.5:1.5:0.00001")
    with pytest.raises(AnnaError, match="budgets; a sweep has at most"):
        parse_sizes(sizes="0:99999999999999999999:0.0000001")
    assert parse_sizes(sizes=".5:.6:.05") == [0.5, 0.55, 0.6]


def _analysis(diag: np.ndarray) -> Analysis:
    n, m = diag.shape
    em = ErrorModel([f"u{i}" for i in range(n)], ["fp16", "fp8-moderate"], diag, np.zeros((n, m, 4), np.float32), 10)
    sizes = np.tile(np.array([[100, 50]], np.int64), (n, 1))
    return Analysis("m", "c", em, sizes, 0, 100 * n)


def test_search_names_non_finite_trials_not_the_budget():
    diag = np.array([[0.0, 1.0], [0.0, np.inf], [0.0, np.nan]])
    with pytest.raises(AnnaError) as e:
        _solve_all(_analysis(diag), [0.5])
    msg = str(e.value)
    assert "budget 0.5 is infeasible only because options whose analysis trials gave non-finite errors are " \
           "excluded (2, e.g. u1:fp8-moderate): without them the smallest plan is 0.8333 of FP16" in msg
    with pytest.raises(AnnaError, match="every quantized option of every unit gave a non-finite error in analysis "
                                        r"\(3 trials\).*the budget is not the problem"):
        _solve_all(_analysis(np.array([[0.0, np.inf]] * 3)), [0.6])
    with pytest.raises(AnnaError, match=r"budget 0.1 is infeasible: the smallest plan of this bag is 0.5000"):
        _solve_all(_analysis(np.array([[0.0, 1.0]] * 3)), [0.1])  # a truly infeasible budget is still that


def test_non_finite_reference_output_names_the_input():
    outputs = [torch.ones(4), torch.tensor([1.0, float("nan"), float("inf"), 2.0])]
    with pytest.raises(AnnaError, match="output on cached calibration input 1 holds 2 non-finite values \\(of 4\\)"):
        reference_outputs(lambda k: outputs[k], [0, 1])
    assert len(reference_outputs(lambda k: outputs[0], [0, 0])) == 2


def test_non_finite_weights_are_named(tiny, tmp_path):
    from anna.calibrate import calibrate
    from anna.units import nonfinite_weights

    unet = tiny.component("unet")
    assert nonfinite_weights(unet) == []
    with torch.no_grad():
        unet.mid_block.resnets[0].conv1.weight[0, 0, 0, :2] = torch.tensor([float("nan"), float("inf")])
    assert nonfinite_weights(unet) == [("mid_block.resnets.0.conv1.weight", 2)]
    said: list[str] = []
    with pytest.raises(AnnaError, match="at least one prompt"):  # the warning comes first, before any work
        calibrate(tiny, tmp_path / "r", prompts=[], include=["conv_in"], progress=False, log=said.append)
    assert said and said[0].startswith("warning: weight unet.mid_block.resnets.0.conv1.weight holds 2 non-finite")
