"""The Python front door: the README's examples run as they are; quantize, save and load round trip bit-exactly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import anna
from anna.errors import AnnaError

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if "anna.quantize" in b]


def test_readme_has_the_module_and_pipeline_examples():
    blocks = _readme_blocks()
    assert len(blocks) == 2
    assert "nn.Module" in blocks[0] and "build_pipeline" in blocks[1]


@pytest.mark.parametrize("which", [0, 1], ids=["module", "tiny-sdxl-pipeline"])
def test_readme_example_runs(which, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "readme"}
    exec(compile(_readme_blocks()[which], f"README.md block {which}", "exec"), scope)  # its asserts must hold
    q = scope["q"]
    assert (tmp_path / ("ckpt-net" if which == 0 else "ckpt-tiny") / "model.safetensors").is_file()
    assert q.applied and q.plan.bytes <= q.plan.budget * q.plan.bytes / q.size_ratio
    assert any(o != "fp16" for o in q.plan.units.values())
    if which == 0:
        front = scope["front"]
        assert [round(p.plan.budget, 3) for p in front] == [0.6, 0.7]  # 0.5 lies below the smallest plan
        assert [p.size_ratio <= p.plan.budget for p in front] == [True] * 2
        assert not any(p.applied for p in front)
        # the module given to the front call is left as it was: no unit quantized
        assert all(type(m) in (nn.Conv2d, nn.Linear) for m in front[0].target.children())


class _Net(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.head = nn.Linear(width * 8 * 8, 32)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    torch.manual_seed(0)
    net = _Net()
    batches = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    front = anna.quantize(net, batches, budgets=[0.6, 0.8], run_dir=root / "run")
    return root, net, batches, front


def test_saving_a_front_member_leaves_the_module_as_it_was(saved):
    root, net, _, front = saved
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    ref = net(x)
    anna.save(front[0], root / "ck0")
    assert torch.equal(net(x), ref)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    torch.manual_seed(0)
    loaded = anna.load(root / "ck0", into=_Net())
    front[0].apply()  # now the module itself is quantized as that plan says, and equals the loaded one
    assert torch.equal(loaded(x), net(x)) and not torch.equal(net(x), ref)


def test_load_checks_structure_not_names(saved):
    root, net, _, front = saved
    front[0].apply()
    x = torch.randn(2, 3, 8, 8)
    ref = net(x)
    anna.save(front[1], root / "ck1")  # applies front[1] for the save, then puts front[0] back
    assert front[0].applied and torch.equal(net(x), ref)
    torch.manual_seed(0)
    assert torch.equal(anna.load(root / "ck1", into=_Net())(x), front[1].apply()(x))  # switching members
    front[1].undo()
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in net.children())
    with pytest.raises(AnnaError, match="tensor"):
        anna.load(root / "ck1", into=_Net(width=8))  # same unit names, other shapes


def test_quantize_needs_one_budget_form(saved):
    _, net, batches, _ = saved
    with pytest.raises(AnnaError, match="exactly one"):
        anna.quantize(net, batches)
    with pytest.raises(AnnaError, match="not str"):
        anna.quantize("all-MiniLM-L6-v2", batches, budget=0.5)
