"""Selection on attribute accuracy: the drop from the original is checked against --max-accuracy-drop."""

from __future__ import annotations

import pytest

from anna.errors import AnnaError
from anna.evaluate.select import Thresholds, select_checkpoint


def _data():
    def e(ckpt, size, steps, acc):
        return {"checkpoint": ckpt, "name": ckpt[3:], "steps": steps, "size_ratio": size, "mse": 1.0,
                "accuracy": acc}

    return {"steps": [1, 2], "original": [{"steps": 1, "accuracy": 0.9}, {"steps": 2, "accuracy": 0.95}],
            "entries": [e("/c/a50", 0.50, 1, 0.9), e("/c/a50", 0.50, 2, 0.80),  # drops 0.15 at 2 steps
                        e("/c/a55", 0.55, 1, 0.85), e("/c/a55", 0.55, 2, 0.92)]}


def test_smallest_within_the_accuracy_drop():
    sel = select_checkpoint(_data(), Thresholds(max_accuracy_drop=0.07))
    assert sel.chosen.name == "a55"
    drops = {c.steps: c.value for c in sel.chosen.checks}
    assert drops == {1: pytest.approx(0.05), 2: pytest.approx(0.03)}
    assert "a50" in sel.reason and "accuracy drop 0.15" in sel.reason
    assert sel.to_json()["thresholds"]["max_accuracy_drop"] == 0.07
    assert sel.to_json()["metrics"]["2"]["accuracy"] == 0.92
    assert select_checkpoint(_data(), Thresholds(max_accuracy_drop=0.2)).chosen.name == "a50"


def test_null_accuracy_cannot_pass():
    data = _data()
    for row in data["entries"]:
        row["accuracy"], row["accuracy_reason"] = None, "no prompt is in the shapes domain"
    with pytest.raises(AnnaError, match="accuracy is null \\(no prompt is in the shapes domain\\)"):
        select_checkpoint(data, Thresholds(max_accuracy_drop=0.07))
