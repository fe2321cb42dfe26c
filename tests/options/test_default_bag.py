"""The bag without --bag: per-projection options on components with attention units (UNET_BAG with convolutions,
TRANSFORMER_BAG without), the seed's bag plus FP16 math elsewhere."""

from anna.inventory import build_inventory
from anna.options.registry import (
    DEFAULT_BAG,
    TRANSFORMER_BAG,
    UNET_BAG,
    default_bag,
    get_option,
    option_bytes,
    parse_bag,
    same_trials,
)


def test_each_component_kind_gets_its_bag(tiny):
    kinds = {c: [u.kind for u in build_inventory(tiny, c).units]
             for c in ("unet", "vae_decoder", "text_encoder", "text_encoder_2")}
    assert default_bag(kinds["unet"]) == default_bag(kinds["vae_decoder"]) == UNET_BAG
    assert default_bag(kinds["text_encoder"]) == default_bag(kinds["text_encoder_2"]) == TRANSFORMER_BAG
    assert default_bag(["linear"]) == default_bag(["conv", "linear"]) == DEFAULT_BAG  # nothing to keep per projection
    assert parse_bag(None, TRANSFORMER_BAG) == list(TRANSFORMER_BAG) and parse_bag("fp8-absmax") == ["fp16",
                                                                                                   "fp8-absmax"]
    assert all(get_option(o) for o in TRANSFORMER_BAG) and len(set(TRANSFORMER_BAG)) == len(TRANSFORMER_BAG) == 9


def test_unet_bag_is_the_default_bag_and_the_picked_projection_subsets():
    assert len(UNET_BAG) == len(set(UNET_BAG)) == len(DEFAULT_BAG) + 6
    assert set(UNET_BAG) == set(DEFAULT_BAG) | {
        f"fp8-absmax-fp16math-fp16{s}" for s in ("v", "o", "qo", "ko", "vo", "qvo")}
    assert all(get_option(o) for o in UNET_BAG)
    assert {"fp8-conservative", "fp8-moderate", "fp8-aggressive"} <= set(UNET_BAG)  # DESIGN's four FP8 options


def test_unet_bag_trials_and_bytes_on_tiny_sdxl(tiny):
    """Outside attention units every FP16-math option is its base FP8 option (its trial is copied, its bytes equal),
    so analysis runs the four FP8 options' trials per conv/linear unit and 11 per attention unit; inside, each kept
    projection costs its FP8 saving back."""
    unet = tiny.component("unet")
    inv = build_inventory(tiny, "unet")
    kinds = [u.kind for u in inv.units]
    options = list(UNET_BAG)
    copied = same_trials(kinds, options)
    run = sum(1 for i, k in enumerate(kinds) for j in range(1, len(options)) if (i, j) not in copied)
    n_att = kinds.count("attention")
    assert run == 4 * (len(kinds) - n_att) + 11 * n_att == 4 * 127 + 11 * 34
    unit = next(u for u in inv.units if u.kind == "attention")
    module = unet.get_submodule(unit.name)
    full = option_bytes(module, "attention", "fp8-absmax-fp16math")
    for name in options[len(DEFAULT_BAG):]:
        kept = name.rpartition("-fp16")[2]
        paths = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0"}
        back = sum(module.get_submodule(paths[r]).weight.numel() - 4 * module.get_submodule(paths[r]).weight.shape[0]
                   - 4 for r in kept)
        assert option_bytes(module, "attention", name) == full + back
    conv = next(u for u in inv.units if u.kind == "conv")
    cm = unet.get_submodule(conv.name)
    assert {option_bytes(cm, "conv", o) for o in options[1:]} == {option_bytes(cm, "conv", "fp8-absmax")}
