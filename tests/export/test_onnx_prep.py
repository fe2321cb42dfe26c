"""Graph preprocessing before quantization: layer-norm fusion and the finite attention-mask fill value."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from anna.export.onnx_export import export_graph  # noqa: E402
from anna.export.onnx_prep import MASK_FILL, fix_mask_fill, fuse_layer_norms, preprocess  # noqa: E402


class ManualLayerNorm(nn.Module):
    """A linear followed by a hand-written layer norm: the exporter emits the nine-op pattern."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(16, 16)
        self.w = nn.Parameter(torch.randn(16))
        self.b = nn.Parameter(torch.randn(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lin(x)
        d = x - x.mean(-1, keepdim=True)
        return d / torch.sqrt(d.pow(2).mean(-1, keepdim=True) + 1e-5) * self.w + self.b


def _ops(proto) -> collections.Counter:
    return collections.Counter(n.op_type for n in proto.graph.node)


def test_layer_norm_fusion_turns_the_decomposed_pattern_into_one_op():
    module = ManualLayerNorm().eval()
    x = torch.randn(2, 5, 16)
    proto = export_graph(module, (x,), ["x"], ["y"])
    assert _ops(proto)["ReduceMean"] == 2 and _ops(proto)["LayerNormalization"] == 0
    assert fuse_layer_norms(proto) == 1
    ops = _ops(proto)
    assert ops["LayerNormalization"] == 1 and ops["ReduceMean"] == ops["Sqrt"] == ops["Pow"] == 0
    onnx.checker.check_model(proto)
    got = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, module(x).detach().numpy(), atol=1e-5)


def test_layer_norm_fusion_leaves_native_layer_norms_alone():
    module = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)).eval()
    proto = export_graph(module, (torch.randn(1, 3, 8),), ["x"], ["y"])
    assert _ops(proto)["LayerNormalization"] == 1  # the dynamo exporter already emits the op
    assert fuse_layer_norms(proto) == 0


def _mask_graph():
    """scores + mask -> Softmax, with -inf and finfo.min in the mask; a -1e30 Clip bound that feeds no Softmax."""
    f32min = float(np.finfo(np.float32).min)
    mask = np.array([[0.0, -np.inf, f32min, 0.0]], dtype=np.float32)
    nodes = [
        helper.make_node("Add", ["scores", "mask"], ["masked"], name="add"),
        helper.make_node("Softmax", ["masked"], ["p"], name="softmax", axis=-1),
        helper.make_node("Clip", ["p", "lo"], ["y"], name="clip"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(mask, "mask"), numpy_helper.from_array(np.array(-1e30, np.float32), "lo")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_mask_fill_replaces_inf_and_finfo_min_only_on_the_softmax_path():
    proto = _mask_graph()
    scores = np.array([[1.0, 2.0, 3.0, 0.5]], dtype=np.float32)
    before = ort.InferenceSession(proto.SerializeToString()).run(None, {"scores": scores})[0]
    changed = fix_mask_fill(proto)
    assert changed == [("mask", 2)]
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    np.testing.assert_array_equal(inits["mask"], [[0.0, MASK_FILL, MASK_FILL, 0.0]])
    assert inits["lo"] == np.float32(-1e30)  # a Clip bound is not a mask
    after = ort.InferenceSession(proto.SerializeToString()).run(None, {"scores": scores})[0]
    np.testing.assert_allclose(after, before, atol=1e-30)  # exp(-100) is zero next to exp(0) in fp32


def test_text_encoder_causal_mask_gets_a_finite_fill(tiny):
    from anna.export.onnx_export import graph_module

    wrapper = graph_module(tiny, "text_encoder")
    ids = torch.arange(77).reshape(1, 77) % 50
    proto = export_graph(wrapper, (ids,), ["input_ids"], ["penultimate_hidden_states", "pooled_embeds"])
    negatives = [i.name for i in proto.graph.initializer
                 if numpy_helper.to_array(i).dtype.kind == "f" and numpy_helper.to_array(i).min(initial=0) < -1e4]
    assert negatives, "CLIP's causal mask should be in the exported graph with finfo.min"
    proto, report = preprocess(proto)
    assert {n for n, _ in report.mask_tensors} == set(negatives)
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f" and arr.size:
            assert np.isfinite(arr).all() and arr.min() >= MASK_FILL
    with torch.no_grad():
        ref = wrapper(ids)
    got = ort.InferenceSession(proto.SerializeToString()).run(None, {"input_ids": ids.numpy()})
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r.numpy(), atol=1e-5)
