"""The linear model's probes without --probes: enough per unit on UNets and decoders with few calibration rows."""

from anna.analyze.linearized import DEFAULT_PROBES
from anna.analyze.stage import UNET_MAX_PROBES, UNET_PROJECTIONS_PER_UNIT, default_probes


def test_probes_per_unit_on_conv_attention_components_only():
    unet = ["conv"] * 50 + ["linear"] * 77 + ["attention"] * 34  # tiny-sdxl's and tiny-t2i's UNet: 161 units
    decoder = ["conv"] * 27 + ["attention"]  # tiny-t2i's VAE decoder: 28 units
    assert UNET_PROJECTIONS_PER_UNIT == 20
    assert default_probes(unet, 200) == 17 - 1  # ceil(3220 / 200) = 17, capped at 16
    assert default_probes(unet, 1600) == DEFAULT_PROBES == 4  # ceil(3220 / 1600) = 3 -> the floor
    assert default_probes(unet, 400) == 9  # ceil(3220 / 400)
    assert default_probes(decoder, 100) == 6  # ceil(560 / 100)
    assert default_probes(unet, 16) == default_probes(unet, 0) == UNET_MAX_PROBES == 16  # SDXL's 16 rows: capped
    assert default_probes(["attention"] * 12 + ["linear"] * 24, 10) == DEFAULT_PROBES  # a transformer keeps 4
    assert default_probes(["conv"] * 40, 10) == DEFAULT_PROBES
