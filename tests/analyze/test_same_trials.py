"""Analysis runs one trial per distinct quantization: an attention-only option on a Linear unit is its base option,
so its trial is copied, and the error model equals the one that runs every trial."""

from __future__ import annotations

import numpy as np
import torch
from diffusers.models.attention_processor import Attention
from nets import calibrated_quantizer
from torch import nn

from anna.analyze.error_model import build_error_model
from anna.options.registry import same_trials
from anna.units import unit_modules

BAG = ["fp16", "fp8-absmax", "fp8-moderate", "fp8-absmax-fp16math", "fp8-moderate-fp16math",
       "fp8-absmax-fp16math-fp16kv"]


def test_same_trials_maps_variants_to_their_base_outside_attention() -> None:
    same = same_trials(["linear", "attention", "conv"], BAG)
    assert same == {(0, 3): 1, (0, 4): 2, (0, 5): 1, (2, 3): 1, (2, 4): 2, (2, 5): 1}
    # without the base in the bag the variant's trial runs
    assert same_trials(["linear"], ["fp16", "fp8-absmax-fp16math", "fp8-absmax-fp16math-fp16k"]) == {(0, 2): 1}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(16, 32)
        self.attn = Attention(query_dim=32, heads=2, dim_head=16)
        self.out = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + self.attn(h))


def test_copied_trials_equal_run_trials() -> None:
    net = Net().eval()
    samples = [torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    units = unit_modules(net)
    quantizer = calibrated_quantizer(net, samples)
    names = [n for n, _, _ in units]
    runs = [0]

    def run(x):
        runs[0] += 1
        return net(x)

    full = build_error_model(run, samples, names, BAG, quantizer, progress=False)
    n_full = runs[0]
    runs[0] = 0
    same = same_trials([k for _, k, _ in units], BAG)
    fast = build_error_model(run, samples, names, BAG, quantizer, progress=False, same_as=same)
    assert n_full - runs[0] == len(same) * len(samples) == 6 * 2
    np.testing.assert_array_equal(fast.diag, full.diag)
    np.testing.assert_array_equal(fast.sketches, full.sketches)
    attn = names.index("attn")
    # on the attention unit the variants differ from their bases: FP16 math is better than FP8 math
    assert fast.diag[attn, 3] < fast.diag[attn, 1] and fast.diag[attn, 5] < fast.diag[attn, 3]


def test_plans_name_the_canonical_option() -> None:
    """A plan written by search names fp8-absmax on a Linear unit even when the solver picked its fp16math twin (same
    trial, same bytes); on attention units the variant keeps its name; a canonical option outside the bag is not
    used."""
    from anna.adapters import from_module
    from anna.inventory import build_inventory, canonical_assignment

    inv = build_inventory(from_module(Net(), [], name="net"))
    picked = {"inp": "fp8-absmax-fp16math-fp16kv", "attn": "fp8-absmax-fp16math-fp16kv", "out": "fp8-moderate-fp16math"}
    assert canonical_assignment(inv, picked, BAG) == {"inp": "fp8-absmax", "attn": "fp8-absmax-fp16math-fp16kv",
                                                      "out": "fp8-moderate"}
    assert canonical_assignment(inv, picked, ["fp16", "fp8-absmax", "fp8-moderate-fp16math"])["out"] == \
        "fp8-moderate-fp16math"
    assert inv.plan_bytes(picked) == inv.plan_bytes(canonical_assignment(inv, picked))
