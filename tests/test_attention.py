"""Attention taps: identity taps reproduce the original outputs; a tap's return value is what the math uses."""

import torch

import anna.attention as attention
from anna.attention import set_tap
from anna.units import ACTIVATIONS, unit_modules


def _unet_inputs():
    g = torch.Generator().manual_seed(0)
    return dict(
        sample=torch.randn(2, 4, 8, 8, generator=g),
        timestep=torch.tensor(10),
        encoder_hidden_states=torch.randn(2, 77, 64, generator=g),
        added_cond_kwargs={"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.randn(2, 6, generator=g)},
    )


def _attention_units(module):
    return [m for _, kind, m in unit_modules(module) if kind == "attention"]


@torch.no_grad()
def test_identity_tap_matches_diffusers_and_restores(tiny, monkeypatch):
    unet, x = tiny.component("unet"), _unet_inputs()
    ref = unet(**x).sample
    seen: dict[str, int] = {}

    def tap(name, t):
        seen[name] = seen.get(name, 0) + 1
        return t

    units = _attention_units(unet)
    for u in units:
        set_tap(u, tap)
    monkeypatch.setattr(attention, "MAX_SCORE_ELEMENTS", 1000)  # force query chunking
    out = unet(**x).sample
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert set(seen) == set(ACTIVATIONS["attention"])
    assert seen["q"] == len(units) and seen["p"] > len(units)  # p is seen once per query chunk
    for u in units:
        set_tap(u, None)
    assert torch.equal(unet(**x).sample, ref)


@torch.no_grad()
def test_identity_tap_matches_clip_and_bert(tiny):
    from anna.adapters import minilm

    te = tiny.component("text_encoder_2")
    ids = tiny.pipeline.tokenizer_2(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    ref = te(ids, output_hidden_states=True)
    for u in _attention_units(te):
        set_tap(u, lambda n, t: t)
    out = te(ids, output_hidden_states=True)
    assert torch.allclose(out.hidden_states[-2], ref.hidden_states[-2], atol=1e-5)
    assert torch.allclose(out.text_embeds, ref.text_embeds, atol=1e-5)

    model = minilm.load(["a cat on a mat", "two dogs"])  # padded batch: the mask matters
    module = model.component()
    ref = model.forward(module, model.batches[0])
    for u in _attention_units(module):
        set_tap(u, lambda n, t: t)
    assert torch.allclose(model.forward(module, model.batches[0]), ref, atol=1e-5)


@torch.no_grad()
def test_tap_output_is_used(tiny):
    dec = tiny.component("vae_decoder")
    (unit,) = _attention_units(dec)
    captured = {}

    def zero_probs(name, t):
        captured[name] = t
        return torch.zeros_like(t) if name == "p" else t

    set_tap(unit, zero_probs)
    hidden = torch.randn(1, 16, 4, 4)
    out = unit(hidden)
    # with zero probabilities the attention output is the out-projection bias, plus the residual
    expected = unit.to_out[0].bias.view(1, -1, 1, 1) + hidden
    assert torch.allclose(out * unit.rescale_output_factor, expected, atol=1e-6)
    p = captured["p"]
    assert torch.allclose(p.sum(-1), torch.ones_like(p.sum(-1)), atol=1e-5)
