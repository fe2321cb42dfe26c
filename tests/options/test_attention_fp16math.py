"""The fp16math attention options: exact bytes, equality with the base option outside attention, FP16 math and
kept projections, reload of BERT attention units."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from anna.adapters import from_module
from anna.calibrate.hooks import observe
from anna.calibrate.observers import UnitObservers
from anna.errors import AnnaError
from anna.export.checkpoint import load_checkpoint_into, round_to_checkpoint_, save_checkpoint
from anna.inventory import build_inventory
from anna.options import FP16, get_option, option_names
from anna.options.apply import apply
from anna.options.attention_fp16math import fp16math_name
from anna.options.registry import canonical_option
from anna.options.wrappers import QuantLinear, unit_option
from anna.plan import make_plan
from anna.units import unit_modules

FP16MATH = [n for n in option_names() if "-fp16math" in n]


class Toy(nn.Module):
    """Self-attention (32 wide, q/k/v without bias, out with bias) and cross-attention from a 24-wide context."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.attn = Attention(query_dim=32, heads=2, dim_head=16)
        self.cross = Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=16)
        self.head = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        h = x + self.attn(x)
        return self.head(h + self.cross(h, encoder_hidden_states=ctx))


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 10, 32, generator=g), torch.randn(2, 5, 24, generator=g)


@pytest.fixture(scope="module")
def stats() -> dict:
    model = Toy().eval()
    units = unit_modules(model)
    obs = UnitObservers([(n, k) for n, k, _ in units])
    with torch.no_grad(), observe(units, obs):
        for s in range(3):
            model(*_inputs(s))
    return obs.compute()


def test_names() -> None:
    assert fp16math_name("absmax") == "fp8-absmax-fp16math"
    assert fp16math_name("absmax", "kv") == "fp8-absmax-fp16math-fp16kv"
    assert len(FP16MATH) == 4 + 14  # four clippings; every proper non-empty subset of q, k, v, o with absmax


def test_exact_bytes() -> None:
    """Bytes counted by hand. attn: q, k, v 32x32 without bias, out 32x32 with a 32 bias (4,128 parameters).
    cross: q 32x32, k and v 32x24, out 32x32 + bias (3,616 parameters). An FP8 projection costs 1 byte per weight,
    4 per output channel and 4 for its input scale; everything else 2 bytes per parameter."""
    inv = build_inventory(from_module(Toy(), [], name="toy"))
    attn, cross = inv.unit("attn").bytes, inv.unit("cross").bytes
    assert attn[FP16] == 8256 and cross[FP16] == 7232
    # the seed's option: 4 projections, 7 activation scales (the math included)
    assert attn["fp8-absmax"] == 4 * 1024 + 4 * 32 * 4 + 7 * 4 + 2 * 32 == 4700
    # FP16 math: 4 projections, each with its input scale
    assert attn["fp8-absmax-fp16math"] == 4 * 1024 + 4 * 32 * 4 + 4 * 4 + 2 * 32 == 4688
    assert cross["fp8-absmax-fp16math"] == (1024 + 768 + 768 + 1024) + 4 * 32 * 4 + 4 * 4 + 2 * 32 == 4176
    # k and v in FP16: q and out quantized
    assert attn["fp8-absmax-fp16math-fp16kv"] == 2 * 1024 + 2 * 32 * 4 + 2 * 4 + 2 * (2 * 1024) + 2 * 32 == 6472
    assert cross["fp8-absmax-fp16math-fp16kv"] == 2 * 1024 + 2 * 32 * 4 + 2 * 4 + 2 * (2 * 768) + 2 * 32 == 5448
    # one projection in FP16 costs that projection's FP16 bytes less its FP8 bytes: a quarter of the unit's step
    assert attn["fp8-absmax-fp16math-fp16k"] - attn["fp8-absmax-fp16math"] == 2048 - (1024 + 128 + 4)
    assert cross["fp8-absmax-fp16math-fp16v"] - cross["fp8-absmax-fp16math"] == 1536 - (768 + 128 + 4)
    # clipping changes ranges, not bytes; outside attention every variant weighs its base
    assert attn["fp8-moderate-fp16math"] == attn["fp8-absmax-fp16math"]
    head = inv.unit("head").bytes
    assert all(head[o] == head[get_option(o).base] == 8 * 32 + 8 * 4 + 4 + 2 * 8 for o in FP16MATH)


@pytest.mark.parametrize("option", ["fp8-absmax-fp16math", "fp8-moderate-fp16math", "fp8-absmax-fp16math-fp16kv"])
def test_equals_base_outside_attention(option: str) -> None:
    """On a Linear or Conv2d unit an fp16math option is its base option: same stored tensors, same output."""
    opt = get_option(option)
    assert canonical_option(option, "attention") == option
    assert canonical_option(option, "linear") == canonical_option(option, "conv") == opt.base
    assert canonical_option("fp8-absmax", "linear") == "fp8-absmax"
    torch.manual_seed(0)
    for unit, shape in ((nn.Linear(16, 24), (4, 16)), (nn.Conv2d(4, 8, 3, padding=1), (2, 4, 6, 6))):
        model = nn.Sequential(unit).eval()
        units = unit_modules(model)
        obs = UnitObservers([(n, k) for n, k, _ in units])
        with torch.no_grad(), observe(units, obs):
            model(torch.randn(*shape))
        st = obs.compute()
        kind = units[0][1]
        a = opt.quantize(unit, kind, st["0"])
        b = get_option(opt.base).quantize(unit, kind, st["0"])
        assert a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)
        x = torch.randn(*shape)
        qa, qb = copy.deepcopy(model), copy.deepcopy(model)
        apply(qa, {"0": option}, st, echo=None)
        apply(qb, {"0": opt.base}, st, echo=None)
        with torch.no_grad():
            assert torch.equal(qa(x), qb(x))
        assert unit_option(qa[0]) == option


def test_math_unquantized_and_kept_projections(stats) -> None:
    """fp16math leaves the attention math alone (no tap, the unit's own processor) and quantizes each projection's
    input itself; the kept projections stay plain Linears holding the FP16 values of the original weights."""
    model = Toy().eval()
    original = copy.deepcopy(model)
    processor = model.attn.processor
    apply(model, {"attn": "fp8-absmax-fp16math-fp16kv", "cross": "fp8-absmax-fp16math"}, stats, echo=None)
    assert model.attn.processor is processor and not hasattr(model.attn, "act_quant")
    for name in ("to_q", "to_out.0"):
        sub = model.attn.get_submodule(name)
        assert isinstance(sub, QuantLinear) and sub.quantize_input
    for name in ("to_k", "to_v"):
        sub, ref = model.attn.get_submodule(name), original.attn.get_submodule(name)
        assert type(sub) is nn.Linear
        assert torch.equal(sub.weight, ref.weight.half().float())
    assert all(isinstance(model.cross.get_submodule(n), QuantLinear) for n in ("to_q", "to_k", "to_v", "to_out.0"))
    with torch.no_grad():
        out = model(*_inputs(9))
        ref = original(*_inputs(9))
    assert torch.isfinite(out).all() and not torch.equal(out, ref)


def test_fp16_math_beats_fp8_math(stats) -> None:
    """Same projections, same bytes but 12: quantizing Q, K, V and the probabilities on top costs output SQNR."""
    from anna.options.quant import sqnr_db

    model = Toy().eval()
    x = _inputs(7)
    with torch.no_grad():
        ref = model(*x)
        out = {}
        for opt in ("fp8-absmax", "fp8-absmax-fp16math", "fp8-absmax-fp16math-fp16kv"):
            q = copy.deepcopy(model)
            apply(q, {"attn": opt, "cross": opt}, stats, echo=None)
            out[opt] = sqnr_db(ref, q(*x))
    # measured: 36.8 / 39.4 / 43.9 dB
    assert out["fp8-absmax-fp16math"] >= out["fp8-absmax"] + 1.5
    assert out["fp8-absmax-fp16math-fp16kv"] >= out["fp8-absmax-fp16math"] + 3.0


def test_wrong_state_is_refused(stats) -> None:
    model = Toy().eval()
    opt = get_option("fp8-absmax-fp16math-fp16k")
    state = opt.quantize(model.attn, "attention", stats["attn"], where="attn")
    with pytest.raises(AnnaError, match="unexpected tensor"):
        opt.wrap(copy.deepcopy(model.attn), "attention", {**state, "to_k.input_scale": torch.tensor(1.0)}, "attn")
    bad = dict(state)
    bad["to_k.weight"] = bad["to_k.weight"].float()
    with pytest.raises(AnnaError, match="to_k.weight"):
        opt.wrap(copy.deepcopy(model.attn), "attention", bad, "attn")
    with pytest.raises(AnnaError, match="already quantized"):
        done = opt.wrap(copy.deepcopy(model.attn), "attention", state, "attn")
        opt.wrap(done, "attention", state, "attn")


def test_checkpoint_round_trip_mixed(stats, tmp_path) -> None:
    """A plan mixing the seed's option, fp16math variants and FP16: exact bytes on disk, bit-identical reload."""
    model = from_module(Toy(), [], name="toy")
    inv = build_inventory(model)
    plan = make_plan(inv, {"attn": "fp8-absmax-fp16math-fp16qo", "cross": "fp8-absmax", "head": FP16})
    apply(model.component(), plan, stats, echo=None)
    round_to_checkpoint_(model.component(), plan)  # the FP16 head holds FP32 values; the checkpoint stores FP16
    x = _inputs(11)
    with torch.no_grad():
        before = model.component()(*x)
    info = save_checkpoint(model, None, plan, tmp_path / "ck", echo=None)
    assert info.tensor_bytes == plan.bytes
    fresh = from_module(Toy(), [], name="toy")
    load_checkpoint_into(fresh, tmp_path / "ck", echo=None)
    with torch.no_grad():
        assert torch.equal(before, fresh.component()(*x))
    assert unit_option(fresh.component().attn) == "fp8-absmax-fp16math-fp16qo"


class CLIPLikeAttention(nn.Module):
    """CLIP's projection names plus an extra gate Linear (which the fp16math options keep in FP16)."""

    def __init__(self, extra: bool = True) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(16, 16) for _ in range(4))
        self.gate = nn.Linear(16, 4) if extra else None


class OddAttention(nn.Module):
    """An attention module of unknown layout (no q/k/v/out projection names that anna knows)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)


def test_other_linears_stay_fp16_and_unknown_layouts_have_no_size() -> None:
    model = from_module(nn.ModuleDict({"clip": CLIPLikeAttention(), "odd": OddAttention()}), [], name="odd")
    inv = build_inventory(model)
    clip, odd = inv.unit("clip").bytes, inv.unit("odd").bytes
    # four FP8 projections (16x16 + 16 bias each) and the gate (16x4 + 4) in FP16
    assert clip["fp8-absmax-fp16math"] == 4 * (256 + 16 * 4 + 4 + 2 * 16) + 2 * (64 + 4)
    assert clip["fp8-absmax-fp16math-fp16o"] == 3 * (256 + 16 * 4 + 4 + 2 * 16) + 2 * (272 + 68)
    assert not any(o in odd for o in FP16MATH) and odd["fp8-absmax"] > 0
    with pytest.raises(AnnaError, match="unsupported attention module"):
        build_inventory(model, options=["fp16", "fp8-absmax-fp16math"])
    with pytest.raises(AnnaError, match="has no size for unit odd"):
        inv.plan_bytes({"odd": "fp8-absmax-fp16math"})
