"""Checkpoint layout, exact byte accounting, reload, and clear errors for bad input (corrupt, truncated, foreign)."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from diffusers.models.attention_processor import Attention
from safetensors import safe_open
from torch import nn

from anna.adapters import from_module
from anna.calibrate.hooks import observe
from anna.calibrate.observers import UnitObservers
from anna.errors import AnnaError
from anna.export.checkpoint import (
    PLAN_FILE,
    TENSORS_FILE,
    load_checkpoint_into,
    read_checkpoint,
    round_to_checkpoint_,
    safetensors_header_bytes,
    save_checkpoint,
)
from anna.export.formats import FORMATS, exporter
from anna.inventory import build_inventory
from anna.options.apply import apply
from anna.options.quant import FP8_DTYPE
from anna.plan import make_plan
from anna.units import unit_modules


class Small(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(4, width, 3, padding=1)
        self.attn = Attention(query_dim=width, heads=2, dim_head=8)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 4)
        self.register_buffer("ids", torch.arange(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).flatten(2).transpose(1, 2)
        h = h + self.attn(self.norm(h))
        return self.out(h)


def _x(seed: int) -> torch.Tensor:
    return torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(seed))


def _model(width: int = 16, name: str = "small"):
    return from_module(Small(width), [], name=name)


def _stats(model) -> dict:
    comp = model.component()
    units = unit_modules(comp)
    obs = UnitObservers([(n, k) for n, k, _ in units])
    with torch.no_grad(), observe(units, obs):
        for s in range(3):
            comp(_x(s))
    return obs.compute()


@pytest.fixture
def ckpt(tmp_path):
    """A saved checkpoint: conv fp8-moderate, attention qdq-u8u16, out kept fp16."""
    model = _model()
    plan = make_plan(build_inventory(model), {"conv": "fp8-moderate", "attn": "qdq-u8u16", "out": "fp16"})
    apply(model.component(), plan, _stats(model), echo=None)
    save_checkpoint(model, None, plan, tmp_path / "ck", echo=None)
    return tmp_path / "ck", model, plan


def test_layout_and_dtypes(ckpt) -> None:
    path, model, plan = ckpt
    assert sorted(p.name for p in path.iterdir()) == [TENSORS_FILE, PLAN_FILE]
    with safe_open(path / TENSORS_FILE, "pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    assert meta["format"] == "anna-checkpoint" and meta["model"] == "small" and meta["component"] == "model"
    assert t["conv.weight"].dtype == FP8_DTYPE and t["conv.weight_scale"].dtype == torch.float32
    assert t["conv.weight_scale"].shape == (16,) and t["conv.input_scale"].shape == ()
    assert t["conv.bias"].dtype == torch.float16
    assert t["attn.to_q.weight"].dtype == torch.uint8 and t["attn.to_q.weight_zero_point"].dtype == torch.uint8
    assert t["attn.act_quant.p_scale"].dtype == torch.float32
    assert t["attn.act_quant.p_zero_point"].dtype == torch.uint16
    assert {f"attn.act_quant.{a}_scale" for a in ("input", "context", "out_in", "q", "k", "v", "p")} <= set(t)
    assert t["out.weight"].dtype == torch.float16 and t["norm.weight"].dtype == torch.float16
    assert t["ids"].dtype == torch.int64
    obj = json.loads((path / PLAN_FILE).read_text())
    assert obj["format_version"] == 1 and obj["model_spec"] == "small" and obj["component"] == "model"
    assert obj["units"] == {"conv": "fp8-moderate", "attn": "qdq-u8u16", "out": "fp16"}
    size = (path / TENSORS_FILE).stat().st_size
    assert size - safetensors_header_bytes(path / TENSORS_FILE) == plan.bytes == sum(
        v.numel() * v.element_size() for v in t.values()
    )


def test_reload_identical_including_fp16_units(ckpt) -> None:
    path, model, plan = ckpt
    comp = model.component()
    assert round_to_checkpoint_(comp, plan) > 0  # the fp16 `out` unit and the norm hold FP32 values
    assert round_to_checkpoint_(comp, plan) == 0
    fresh = _model()
    load_checkpoint_into(fresh, path, echo=None)
    with torch.no_grad():
        assert torch.equal(comp(_x(9)), fresh.component()(_x(9)))


def test_reload_on_another_device_dtype_keeps_scales(ckpt) -> None:
    path, _, _ = ckpt
    fresh = _model()
    load_checkpoint_into(fresh, path, echo=None)
    comp = fresh.component()
    comp.half()
    assert comp.conv.weight_scale.dtype == torch.float32 and comp.attn.act_quant.q_scale.dtype == torch.float32
    assert comp.conv.weight.dtype == FP8_DTYPE and comp.out.weight.dtype == torch.float16


def _expect(path, match: str, model=None) -> None:
    with pytest.raises(AnnaError, match=match):
        load_checkpoint_into(model or _model(), path, echo=None)


def test_missing_files(tmp_path, ckpt) -> None:
    _expect(tmp_path / "nope", "checkpoint not found")
    path, _, _ = ckpt
    (path / TENSORS_FILE).unlink()
    _expect(path, "checkpoint tensors not found")


def test_corrupt_file(ckpt) -> None:
    path, _, _ = ckpt
    data = bytearray((path / TENSORS_FILE).read_bytes())
    data[8:40] = b"#" * 32  # garbage in the JSON header
    (path / TENSORS_FILE).write_bytes(bytes(data))
    _expect(path, "corrupt")


def test_garbage_file(ckpt) -> None:
    path, _, _ = ckpt
    (path / TENSORS_FILE).write_bytes(b"this is not a safetensors file at all")
    _expect(path, "truncated|corrupt")


def test_truncated_file(ckpt) -> None:
    path, _, _ = ckpt
    data = (path / TENSORS_FILE).read_bytes()
    (path / TENSORS_FILE).write_bytes(data[: len(data) - 100])
    _expect(path, "corrupt or truncated")
    (path / TENSORS_FILE).write_bytes(data[:20])
    _expect(path, "truncated")


def test_not_an_anna_file(ckpt, tmp_path) -> None:
    from safetensors.torch import save_file

    path, _, _ = ckpt
    save_file({"x": torch.zeros(2)}, str(path / TENSORS_FILE))
    _expect(path, "not an anna checkpoint")


def test_corrupt_plan_json(ckpt) -> None:
    path, _, _ = ckpt
    (path / PLAN_FILE).write_text("{not json")
    _expect(path, "not valid JSON")


def test_plan_for_another_model(ckpt) -> None:
    path, _, _ = ckpt
    _expect(path, "is for model 'small', not 'other'", model=_model(name="other"))


def test_same_name_other_shapes(ckpt) -> None:
    path, _, _ = ckpt
    _expect(path, r"is torch.float16 \(16,\), expected torch.float16 \(32,\)", model=_model(width=32))


def test_unknown_option_in_plan(ckpt) -> None:
    path, _, _ = ckpt
    obj = json.loads((path / PLAN_FILE).read_text())
    obj["units"]["conv"] = "fp8-imaginary"
    (path / PLAN_FILE).write_text(json.dumps(obj))
    _expect(path, "unknown option 'fp8-imaginary'")


@pytest.mark.parametrize("unit, option, held", [("conv", "fp8-absmax", "fp8-moderate"), ("out", "fp8-absmax", "fp16"),
                                                 ("attn", "fp16", "qdq-u8u16")])
def test_plan_and_tensors_disagree(ckpt, unit, option, held) -> None:
    """An option edited in plan.json is refused, even one of the same storage (fp8-moderate -> fp8-absmax): the
    tensors' metadata records which option each unit was saved with."""
    path, _, _ = ckpt
    obj = json.loads((path / PLAN_FILE).read_text())
    obj["units"][unit] = option
    (path / PLAN_FILE).write_text(json.dumps(obj))
    _expect(path, f"plan.json says unit '{unit}' is {option}, but model.safetensors holds it as {held}")


def test_checkpoint_without_recorded_options_still_loads(ckpt) -> None:
    """Checkpoints written before the options were recorded load as before (their tensors are checked)."""
    from safetensors.torch import load_file, save_file

    path, model, plan = ckpt
    round_to_checkpoint_(model.component(), plan)
    file = path / TENSORS_FILE
    with safe_open(file, "pt") as f:
        meta = f.metadata()
    assert json.loads(meta.pop("quantized_units")) == {"conv": "fp8-moderate", "attn": "qdq-u8u16"}
    save_file(load_file(file), str(file), metadata=meta)
    fresh = _model()
    load_checkpoint_into(fresh, path, echo=None)
    with torch.no_grad():
        assert torch.equal(model.component()(_x(9)), fresh.component()(_x(9)))


def test_truncated_tensor_data_found_without_reading_it(ckpt) -> None:
    from anna.export.checkpoint import verify_checkpoint

    path, _, _ = ckpt
    file = path / TENSORS_FILE
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(AnnaError, match="corrupt or truncated: the header describes"):
        verify_checkpoint(path)


def test_tensor_dtype_tampered(ckpt) -> None:
    from safetensors.torch import load_file, save_file

    path, _, _ = ckpt
    file = path / TENSORS_FILE
    with safe_open(file, "pt") as f:
        meta = f.metadata()
    t = load_file(file)
    t["conv.weight"] = t["conv.weight"].float()
    save_file(t, str(file), metadata=meta)
    _expect(path, "unit conv: tensor .weight. is torch.float32.*expected torch.float8_e4m3fn")


def test_extra_tensor(ckpt) -> None:
    from safetensors.torch import load_file, save_file

    path, _, _ = ckpt
    file = path / TENSORS_FILE
    with safe_open(file, "pt") as f:
        meta = f.metadata()
    t = load_file(file)
    t["surprise"] = torch.zeros(1)
    save_file(t, str(file), metadata=meta)
    _expect(path, "surprise")


def test_header_bytes_helper(ckpt) -> None:
    path, _, _ = ckpt
    raw = (path / TENSORS_FILE).read_bytes()
    assert safetensors_header_bytes(path / TENSORS_FILE) == 8 + struct.unpack("<Q", raw[:8])[0]
    obj, tensors = read_checkpoint(path)
    assert obj["model"] == "small" and "conv.weight" in tensors


def test_save_needs_apply(tmp_path) -> None:
    model = _model()
    plan = make_plan(build_inventory(model), {}, default="fp8-absmax")
    with pytest.raises(AnnaError, match="apply the plan before saving"):
        save_checkpoint(model, None, plan, tmp_path / "ck", echo=None)


def test_formats_dispatch(monkeypatch) -> None:
    import importlib

    from anna.export import checkpoint

    assert set(FORMATS) >= {"safetensors", "onnx-qdq"}
    assert exporter("safetensors") is checkpoint.export_checkpoint
    with pytest.raises(AnnaError, match="unknown export format 'zip'.*safetensors"):
        exporter("zip")
    real = importlib.import_module

    def no_onnx(name, *a, **k):
        if name == "anna.export.onnx_qdq":
            raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_onnx)
    with pytest.raises(AnnaError, match=r"onnx-qdq export needs anna\[onnx\].*onnxruntime"):
        exporter("onnx-qdq")


def test_cli_export_errors(tmp_path, capsys) -> None:
    from anna.cli import main

    with pytest.raises(SystemExit) as e:
        main(["export", "--run", str(tmp_path / "norun"), "--plan", "p.json", "--out", str(tmp_path / "ck")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        main(["export", "--run", str(tmp_path), "--plan", "p.json", "--format", "zip", "--out", str(tmp_path / "c")])
    assert e.value.code == 2 and "unknown export format 'zip'" in capsys.readouterr().err


def test_load_twice_is_an_error(ckpt) -> None:
    path, _, _ = ckpt
    fresh = _model()
    load_checkpoint_into(fresh, path, echo=None)
    _expect(path, "already holds quantized units", model=fresh)


def test_load_checkpoint_needs_a_loadable_spec(ckpt) -> None:
    from anna.export.checkpoint import load_checkpoint

    path, _, _ = ckpt
    with pytest.raises(AnnaError, match="unknown model 'small'"):
        load_checkpoint(path, echo=None)
