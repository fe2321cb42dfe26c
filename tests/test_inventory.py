from collections import Counter

import pytest
from torch import nn

from anna.adapters.sdxl_meta import PUBLISHED_FP16_UNITS
from anna.errors import AnnaError
from anna.inventory import build_inventory, match_patterns
from anna.options import get_option
from anna.units import unit_bytes

TEN = PUBLISHED_FP16_UNITS


def test_sdxl_unit_counts(sdxl_model):
    inv = build_inventory(sdxl_model, "unet")
    kinds = Counter(u.kind for u in inv.units)
    assert kinds["conv"] == 51
    assert kinds["attention"] == 140
    assert abs(inv.total_params - 2.567e9) / 2.567e9 < 1e-3
    assert inv.total_bytes_fp16 == 2 * inv.total_params  # the meta UNet has no buffers


def test_sdxl_all_fp8_ratio_and_ten_fp16_units(sdxl_model):
    inv = build_inventory(sdxl_model, "unet")
    all8 = {u.name: "fp8-moderate" for u in inv.units}
    r8 = inv.size_ratio(all8)
    assert 0.500 <= r8 <= 0.503
    ten = dict(all8, **{n: "fp16" for n in TEN})
    delta_points = 100 * (inv.size_ratio(ten) - r8)
    assert 0.06 <= delta_points <= 0.09


def test_exact_bytes_linear_and_conv():
    fp8, qdq = get_option("fp8-moderate").storage, get_option("qdq-u8u16").storage
    lin = nn.Linear(16, 8)  # 128 weights, 8 bias
    assert unit_bytes(lin, "linear", None) == 2 * (128 + 8)
    assert unit_bytes(lin, "linear", fp8) == 128 + 8 * 4 + 8 * 2 + 4
    assert unit_bytes(lin, "linear", qdq) == 128 + 8 * 5 + 8 * 2 + 6
    conv = nn.Conv2d(3, 4, 3, bias=False)  # 108 weights
    assert unit_bytes(conv, "conv", fp8) == 108 + 4 * 4 + 4


def test_attention_unit_groups_projections(tiny):
    inv = build_inventory(tiny, "unet")
    att = inv.unit("down_blocks.1.attentions.0.transformer_blocks.0.attn2")
    assert att.kind == "attention"
    assert set(att.weights) == {"to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"}
    # no Linear inside an attention unit is a unit of its own
    assert not any(u.name.startswith(att.name + ".") for u in inv.units)


def test_components_of_tiny(tiny):
    for comp in ("unet", "text_encoder", "text_encoder_2", "vae_decoder"):
        inv = build_inventory(tiny, comp)
        assert inv.units, comp
        assert inv.base_bytes >= 0
        total = sum(p.numel() for p in tiny.component(comp).parameters())
        assert inv.total_params == total
    names = build_inventory(tiny, "text_encoder").names
    assert "encoder.layers.0.self_attn" in names


def test_include_exclude_and_errors(sdxl_model):
    inv = build_inventory(sdxl_model, "unet", include=["up_blocks.2.*"], exclude=["*conv_shortcut"])
    assert inv.units and all(u.name.startswith("up_blocks.2.") and "conv_shortcut" not in u.name for u in inv.units)
    with pytest.raises(AnnaError, match="closest"):
        build_inventory(sdxl_model, "unet", include=["down_blocks.9.*"])
    with pytest.raises(AnnaError, match="unknown component"):
        build_inventory(sdxl_model, "text_encoder")
    assert match_patterns(["a.b", "a.c"], ["a.*"]) == {"a.b", "a.c"}


def test_minilm_generic_inventory():
    from anna.adapters import minilm

    model = minilm.load(["a cat on a mat"])
    inv = build_inventory(model)
    kinds = Counter(u.kind for u in inv.units)
    assert kinds["attention"] == 6  # one BertAttention per layer
    assert kinds["linear"] == 13  # intermediate + output per layer, plus the pooler
    assert inv.total_params == 22_713_216
    out = model.forward(model.component(), model.batches[0])
    assert out.shape == (1, 384)
