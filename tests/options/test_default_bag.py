"""The bag without --bag: the per-projection options join on transformer components, not on a UNet."""

from anna.inventory import build_inventory
from anna.options.registry import DEFAULT_BAG, TRANSFORMER_BAG, default_bag, get_option, parse_bag


def test_transformers_get_the_per_projection_bag_and_unets_the_default(tiny):
    kinds = {c: [u.kind for u in build_inventory(tiny, c).units] for c in ("unet", "text_encoder", "text_encoder_2")}
    assert default_bag(kinds["unet"]) == DEFAULT_BAG
    assert default_bag(kinds["text_encoder"]) == default_bag(kinds["text_encoder_2"]) == TRANSFORMER_BAG
    assert default_bag(["linear"]) == DEFAULT_BAG  # no attention unit: nothing to keep per projection
    assert parse_bag(None, TRANSFORMER_BAG) == list(TRANSFORMER_BAG) and parse_bag("fp8-absmax") == ["fp16",
                                                                                                   "fp8-absmax"]
    assert all(get_option(o) for o in TRANSFORMER_BAG) and len(set(TRANSFORMER_BAG)) == len(TRANSFORMER_BAG) == 9
