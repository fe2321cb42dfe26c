import json

import pytest

from anna.errors import AnnaError
from anna.inventory import build_inventory
from anna.plan import load_plan, make_plan


def test_short_form_plan_is_filled_in(sdxl_model, tmp_path):
    inv = build_inventory(sdxl_model, "unet")
    p = tmp_path / "ten.json"
    p.write_text(json.dumps({"default": "fp8-moderate", "units": {"conv_in": "fp16", "conv_out": "fp16"}}))
    plan = load_plan(p, inv)
    assert len(plan.units) == len(inv.units)
    assert plan.fp16_units == ["conv_in", "conv_out"]
    assert plan.bytes == inv.plan_bytes(plan.units)
    assert plan.size_ratio == pytest.approx(plan.bytes / inv.total_bytes_fp16)
    saved = plan.save(tmp_path / "full.json")
    again = load_plan(saved, inv)
    assert again.units == plan.units and again.bytes == plan.bytes
    assert json.loads(saved.read_text())["format_version"] == 1


def test_bad_plans(sdxl_model, tiny, tmp_path):
    inv = build_inventory(sdxl_model, "unet")
    with pytest.raises(AnnaError, match="unknown option 'fp7'"):
        make_plan(inv, {"conv_in": "fp7"})
    with pytest.raises(AnnaError, match="another model"):
        make_plan(inv, {"not.a.unit": "fp16"})
    tiny_plan = make_plan(build_inventory(tiny, "unet"), {}, default="fp8-moderate")
    path = tiny_plan.save(tmp_path / "tiny.json")
    with pytest.raises(AnnaError, match="is for model 'tiny-sdxl'"):
        load_plan(path, inv)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AnnaError, match="not valid JSON"):
        load_plan(bad, inv)


def test_typed_plan_reads_checks_and_is_frozen(sdxl_model, tiny, tmp_path):
    import dataclasses

    from anna.plan import Plan

    inv = build_inventory(sdxl_model, "unet")
    plan = make_plan(inv, {"conv_in": "fp8-moderate"}, budget=0.9)
    path = plan.save(tmp_path / "p.json")
    back = Plan.read(path)  # no inventory needed to read it
    assert back == plan and back.check(inv) is back
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.bytes = 0
    # "plan names unknown units" is one check, the same from make_plan, Plan.check and apply
    from anna.options.apply import apply

    foreign = dataclasses.replace(plan, units={**plan.units, "conv_inn": "fp16"})
    for call in (lambda: foreign.check(inv), lambda: make_plan(inv, {"conv_inn": "fp16"}),
                 lambda: apply(sdxl_model.component("unet"), {"conv_inn": "fp16"}, {}, echo=None)):
        with pytest.raises(AnnaError, match="plan names 1 unit\\(s\\) that .* e.g. 'conv_inn'; closest: conv_in"):
            call()
    with pytest.raises(AnnaError, match="not tiny-sdxl/unet"):
        plan.check(build_inventory(tiny, "unet"))
    obj = json.loads(path.read_text())
    for broken, message in ((dict(obj, units=["conv_in"]), "'units' must map"),
                            ({k: v for k, v in obj.items() if k != "bytes"}, "lacks bytes"),
                            (dict(obj, size_ratio="big"), "could not convert")):
        (tmp_path / "bad.json").write_text(json.dumps(broken))
        with pytest.raises(AnnaError, match=message):
            Plan.read(tmp_path / "bad.json")


@pytest.mark.parametrize("obj, message", [
    ({}, 'is empty: it names no units and no default option; write {"default": "fp16"}'),
    ({"units": {}}, "is empty"),
    ({"units": {"conv_in": ["fp16", "fp8-moderate"]}}, "unit 'conv_in' must name one option (a string such as"),
    ({"units": {"conv_in": {"option": "fp16"}}}, "unit 'conv_in' must name one option"),
    ({"units": ["conv_in"]}, "'units' must map unit names to option names, not be a list"),
    ({"default": "fp16", "bag": "notalist"}, "'bag' must be a list of option names"),
    ({"default": "fp16", "bag": [1, 2]}, "'bag' must be a list of option names"),
    ({"default": "fp16", "budget": "abc"}, "'budget' must be a number or null, not 'abc'"),
    ({"default": "fp16", "budget": True}, "'budget' must be a number or null, not True"),
    ({"default": "fp16", "budget": 7.0}, "'budget' 7.0 is out of range (0, 1.5]"),
    ({"default": "fp16", "bytes": [1]}, "'bytes' must be a number or null"),
    ({"default": 3}, "'default' must be a string, not int"),
    ({"default": "fp16", "model": {"a": 1}}, "'model' must be a string, not dict"),
    ({"default": "fp16", "note": json.loads("[" * 17 + "]" * 17)}, "nests lists and objects more than 16 levels deep"),
])
def test_plans_of_the_wrong_shape(sdxl_model, tmp_path, obj, message):
    import re

    inv = build_inventory(sdxl_model, "unet")
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(obj))
    with pytest.raises(AnnaError, match=re.escape(f"plan {p}") + ".*" + re.escape(message)):
        load_plan(p, inv)


def test_plans_of_the_right_shape_still_load(sdxl_model, tmp_path):
    inv = build_inventory(sdxl_model, "unet")
    p = tmp_path / "plan.json"
    p.write_text(json.dumps({"default": "fp16", "budget": 0.5, "bag": ["fp16"], "note": {"a": [[1]]}}))
    plan = load_plan(p, inv)
    assert plan.fp16_units == inv.names and plan.budget == 0.5 and plan.extra == {"note": {"a": [[1]]}}
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AnnaError, match="nests lists and objects too deeply"):
        load_plan(p, inv)
