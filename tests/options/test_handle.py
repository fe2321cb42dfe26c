"""The one handle that swaps units: undo restores the exact original modules, tensors and attention settings;
commit keeps the quantized component; a one-way handle cannot be undone."""

from __future__ import annotations

import pytest
import torch

from anna.adapters import load_model
from anna.errors import AnnaError
from anna.options.handle import QuantHandle
from anna.stats import ActStats


def _stats(kind: str) -> dict[str, ActStats]:
    pct = {str(p): 4.0 * (p - 50) / 50 for p in (1, 5, 10, 90, 95, 99)}
    acts = ("input", "context", "out_in", "q", "k", "v", "p") if kind == "attention" else ("input",)
    return {a: ActStats(min=0.0 if a == "p" else -4.0, max=1.0 if a == "p" else 4.0, absmax=4.0, percentiles=pct)
            for a in acts}


def test_undo_restores_the_exact_component_and_commit_keeps_it():
    model = load_model("tiny-sdxl")
    enc = model.component("text_encoder")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    ref = enc(ids).last_hidden_state
    modules = dict(enc.named_modules())
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    attn_impl = enc.config._attn_implementation
    handle = QuantHandle(enc)
    picked = {}
    for name, (kind, _) in handle.units.items():
        if kind not in picked.values() or len(picked) < 4:
            picked[name] = kind
    assert set(picked.values()) == {"attention", "linear"}
    for name, kind in picked.items():
        handle.quantize_unit(name, "fp8-absmax", _stats(kind))
    handle.set_tensors({"final_layer_norm.weight": torch.full_like(state["final_layer_norm.weight"], 2.0)})
    quantized = enc(ids).last_hidden_state
    assert not torch.equal(quantized, ref) and handle.options == dict.fromkeys(picked, "fp8-absmax")
    with pytest.raises(AnnaError, match="already quantized"):
        handle.quantize_unit(next(iter(picked)), "fp8-moderate", _stats(picked[next(iter(picked))]))

    handle.undo()
    assert all(dict(enc.named_modules())[n] is m for n, m in modules.items())  # the very same module objects
    assert all(torch.equal(v, state[k]) for k, v in enc.state_dict().items()) and set(enc.state_dict()) == set(state)
    assert enc.config._attn_implementation == attn_impl
    assert torch.equal(enc(ids).last_hidden_state, ref)

    with QuantHandle(enc) as trial:  # a context manager undoes on exit
        trial.quantize_unit(next(iter(picked)), "fp8-moderate", _stats(picked[next(iter(picked))]))
        assert not torch.equal(enc(ids).last_hidden_state, ref)
    assert torch.equal(enc(ids).last_hidden_state, ref)

    kept = QuantHandle(enc)
    for name, kind in picked.items():
        kept.quantize_unit(name, "fp8-absmax", _stats(kind))
    kept.commit()
    kept.undo()  # nothing is left to undo: the quantized component stays
    assert not torch.equal(enc(ids).last_hidden_state, ref)
    assert all(getattr(enc.get_submodule(n), "anna_option", None) == "fp8-absmax" for n in picked)

    one_way = QuantHandle(model.component("text_encoder_2"), reversible=False)
    with pytest.raises(AnnaError, match="cannot be undone"):
        one_way.undo()


def test_cached_weights_give_the_same_outputs_and_only_trials_cache():
    from anna.analyze.quantizer import UnitQuantizer
    from anna.options.wrappers import QuantLinear

    model = load_model("tiny-sdxl")
    enc = model.component("text_encoder")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    name, kind = next((n, k) for n, (k, _) in QuantHandle(enc).units.items() if k == "linear")
    with QuantHandle(enc) as handle:  # an applied plan keeps only codes: nothing cached
        wrapper = handle.quantize_unit(name, "fp8-absmax", _stats(kind))
        plain = enc(ids).last_hidden_state
        assert isinstance(wrapper, QuantLinear) and wrapper._dequantized is None
    quantizer = UnitQuantizer(enc, {name: _stats(kind)})
    with quantizer.unit_quantized(name, "fp8-absmax") as trial:  # a trial dequantizes once
        w = trial.weight_for(torch.float32)
        assert trial.weight_for(torch.float32) is w
        assert torch.equal(enc(ids).last_hidden_state, plain)
        assert trial.weight_for(torch.float64) is not w and trial.weight_for(torch.float64).dtype == torch.float64
        trial.to("cpu")  # a device move drops the cached copy
        assert trial._dequantized is None
