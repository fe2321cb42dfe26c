"""ONNX QDQ export of plans with fp16math attention options: the FP8 projections become QDQ, while the attention
math and the projections kept in FP16 stay in float; the seed's option quantizes its attention math as before."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from anna.adapters import from_module  # noqa: E402
from anna.export.onnx_export import unit_nodes  # noqa: E402
from anna.export.onnx_qdq import export_generic_onnx  # noqa: E402
from anna.export.onnx_quant import COMPUTE_OPS, dq_inputs  # noqa: E402
from anna.inventory import build_inventory  # noqa: E402
from anna.options.registry import FP16  # noqa: E402
from anna.plan import make_plan  # noqa: E402

pytestmark = pytest.mark.slow  # an ONNX export and quantization: several seconds


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.attn = Attention(query_dim=32, heads=2, dim_head=16)
        self.cross = Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=16)
        self.mid = Attention(query_dim=32, heads=2, dim_head=16)
        self.head = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        h = x + self.attn(x)
        h = h + self.cross(h, encoder_hidden_states=ctx)
        return self.head(h + self.mid(h))


def _batches(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(2, 10, 32, generator=g), "ctx": torch.randn(2, 5, 24, generator=g)} for _ in range(n)]


def test_fp16math_parts_stay_float(tmp_path) -> None:
    model = from_module(Toy().eval(), _batches(3), forward=lambda m, b: m(b["x"], b["ctx"]), name="toy")
    plan = make_plan(build_inventory(model), {"attn": "fp8-absmax-fp16math-fp16kv", "cross": "fp8-absmax-fp16math",
                                              "mid": "fp8-absmax", "head": FP16})
    manifest = export_generic_onnx(model, tmp_path, plan=plan, echo=None)
    entry = manifest["components"]["model"]
    fp32 = onnx.load(str(tmp_path / "model.fp32.onnx"))
    qdq = onnx.load(str(tmp_path / "model.onnx"))
    paths = ["attn", "cross", "mid", "head"] + [f"{u}.{p}" for u in ("attn", "cross", "mid")
                                                 for p in ("to_q", "to_k", "to_v", "to_out.0")]
    nodes = {}
    for p in paths:  # one scope per call: a node inside attn.to_q is also inside attn
        nodes |= unit_nodes(fp32, [p])
    compute = {n.name for n in qdq.graph.node if n.op_type in COMPUTE_OPS}

    def reads_dq(path: str, exclude: tuple[str, ...] = ()) -> list[bool]:
        inner = {n for e in exclude for n in nodes[e]}
        names = [n for n in nodes[path] if n in compute and n not in inner]
        fed = dq_inputs(qdq, names)
        return [bool(fed[n]) for n in names]

    projections = ("to_q", "to_k", "to_v", "to_out.0")
    # quantized projections read Q/DQ; the kept ones and the attention math (Q K^T and P V) read float
    for unit, quantized in (("attn", ("to_q", "to_out.0")), ("cross", projections)):
        for p in projections:
            assert reads_dq(f"{unit}.{p}") == [p in quantized], (unit, p)
        math = reads_dq(unit, tuple(f"{unit}.{p}" for p in projections))
        assert len(math) == 2 and not any(math), unit
    # the seed's option quantizes its attention math too
    math = reads_dq("mid", tuple(f"mid.{p}" for p in projections))
    assert len(math) == 2 and all(math)
    assert reads_dq("head") == [False]
    assert entry["fp16_units"] == ["head"]
    assert set(entry["float_parts"]) == {"attn", "cross"} and entry["float_parts"]["attn"] > entry["float_parts"][
        "cross"] > 0
