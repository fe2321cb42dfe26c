"""Static QDQ quantization with ONNX Runtime: QUInt8 weights (per output channel), QUInt16 activations, MinMax.

`quantize_graph` calls `onnxruntime.quantization.quantize_static` on an FP32 graph with real calibration inputs
(a `FeedReader` over captured component inputs) and `nodes_to_exclude` = the nodes of the units a plan keeps in FP16.
ORT routes every consumer of a quantized tensor through its DequantizeLinear, excluded ones too; a post-pass
(`restore_float_inputs`) gives the excluded nodes back their float inputs, so an FP16 unit's MatMul/Conv/Gemm has no
Q/DQ in front of it. MinMax calibration keeps only per-tensor minima and maxima (ORT reduces each tensor in the
graph), so its memory does not grow with the activations. Weights and activations are asymmetric (the DESIGN's
`qdq-u8u16`, whose uint math `anna.options.quant.uint_qparams` matches ORT's `compute_scale_zp`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anna.errors import AnnaError
from anna.export.onnx_export import EXTERNAL_DATA_THRESHOLD, model_bytes, save_model

COMPUTE_OPS = ("MatMul", "Conv", "Gemm")


@dataclass(frozen=True)
class QDQSettings:
    """The quantization recipe: the published SDXL-Turbo study's scheme by default."""

    weight_type: str = "QUInt8"
    activation_type: str = "QUInt16"
    per_channel: bool = True
    calibrate_method: str = "MinMax"

    def to_json(self) -> dict[str, Any]:
        return {"format": "QDQ", "weight_type": self.weight_type, "activation_type": self.activation_type,
                "per_channel": self.per_channel, "calibrate_method": self.calibrate_method,
                "weight_symmetric": False, "activation_symmetric": False}


class FeedReader:
    """A `CalibrationDataReader` over prepared input dicts (numpy), restricted to the graph's input names."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], names: Sequence[str] | None = None) -> None:
        self._feeds = [{k: v for k, v in f.items() if names is None or k in names} for f in feeds]
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._feeds):
            return None
        self._i += 1
        return self._feeds[self._i - 1]

    def rewind(self) -> None:
        self._i = 0

    def __len__(self) -> int:
        return len(self._feeds)


@dataclass(frozen=True)
class QuantReport:
    """What quantization did to one graph."""

    samples: int
    excluded_nodes: int
    restored_inputs: int
    summary: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"calibration_samples": self.samples, "excluded_nodes": self.excluded_nodes,
                "restored_float_inputs": self.restored_inputs, **self.summary}


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs its pre-processing advice through the root logger
    try:
        yield
    finally:
        root.setLevel(level)


def _graph_inputs(path: Path) -> list[str]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits]


def quantize_graph(
    fp32_path: str | Path,
    out_path: str | Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    nodes_to_exclude: Sequence[str] = (),
    settings: QDQSettings = QDQSettings(),  # noqa: B008 (frozen)
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> QuantReport:
    """Quantize the graph at `fp32_path` to `out_path` (QDQ), calibrating on `feeds` (one input dict per sample)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not feeds:
        raise AnnaError(f"no calibration inputs for {fp32_path}: static quantization needs real inputs")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    try:
        wtype, atype = QuantType[settings.weight_type], QuantType[settings.activation_type]
        method = CalibrationMethod[settings.calibrate_method]
    except KeyError as e:
        raise AnnaError(f"unknown quantization setting {e}") from None
    names = _graph_inputs(fp32_path)
    missing = [n for n in names if n not in feeds[0]]
    if missing:
        raise AnnaError(f"calibration inputs lack graph input(s) {missing} of {fp32_path.name}")
    external = model_bytes(fp32_path) > external_data_threshold
    tmp = Path(tempfile.mkdtemp(prefix=".quant.", dir=out_path.parent))
    try:
        with _quiet_ort():
            quantize_static(
                str(fp32_path), str(tmp / "model.onnx"), FeedReader(feeds, names),
                quant_format=QuantFormat.QDQ, per_channel=settings.per_channel, activation_type=atype,
                weight_type=wtype, calibrate_method=method, nodes_to_exclude=list(nodes_to_exclude),
                use_external_data_format=external,
                extra_options={"WeightSymmetric": False, "ActivationSymmetric": False},
            )
        proto = onnx.load(str(tmp / "model.onnx"))
        restored = restore_float_inputs(proto, set(nodes_to_exclude), fp32_path)
        summary = qdq_summary(proto)
        save_model(proto, out_path, external_data_threshold)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return QuantReport(len(feeds), len(nodes_to_exclude), restored, summary)


# Post-pass and inspection


def _producers(proto: Any) -> dict[str, Any]:
    return {out: node for node in proto.graph.node for out in node.output}


def restore_float_inputs(proto: Any, excluded: set[str], fp32_path: str | Path | None = None) -> int:
    """Feed excluded nodes their float tensors instead of DequantizeLinear outputs, in place; drop dead Q/DQ.

    An activation `DQ(Q(x))` becomes `x`. A weight `DQ(w_quantized)` (a weight shared with a quantized node)
    becomes the original float initializer, read from `fp32_path`. Returns how many inputs were restored.
    """
    import onnx

    producers = _producers(proto)
    inits = {i.name: i for i in proto.graph.initializer}
    fp32_inits: dict[str, Any] | None = None
    restored = 0
    for node in proto.graph.node:
        if node.name not in excluded:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
            elif dq.input[0] in inits:
                original = dq.input[0].removesuffix("_quantized")
                if original not in inits:
                    if fp32_inits is None:
                        if fp32_path is None:
                            raise AnnaError(f"node {node.name} reads a quantized weight and no FP32 model was given")
                        fp32_inits = {t.name: t for t in onnx.load(str(fp32_path)).graph.initializer}
                    if original not in fp32_inits:
                        raise AnnaError(f"cannot find the float weight '{original}' of excluded node {node.name}")
                    proto.graph.initializer.append(fp32_inits[original])
                    inits[original] = fp32_inits[original]
                node.input[i] = original
            else:
                continue
            restored += 1
    if restored:
        _prune(proto)
    return restored


def _prune(proto: Any) -> None:
    """Remove nodes whose outputs nobody reads (and that are no graph output), then unused initializers."""
    outputs = {o.name for o in proto.graph.output}
    while True:
        used = {name for node in proto.graph.node for name in node.input} | outputs
        dead = [n for n in proto.graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            proto.graph.node.remove(n)
    used = {name for node in proto.graph.node for name in node.input} | outputs
    for init in [i for i in proto.graph.initializer if i.name not in used]:
        proto.graph.initializer.remove(init)


def dq_inputs(proto: Any, node_names: Sequence[str] | set[str]) -> dict[str, list[str]]:
    """For each named node, the inputs it reads from a DequantizeLinear (empty list: all its inputs are float)."""
    producers = _producers(proto)
    wanted = set(node_names)
    out: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.name in wanted:
            out[node.name] = [x for x in node.input if x in producers and producers[x].op_type == "DequantizeLinear"]
    return out


def _zero_point_type(proto: Any, node: Any, inits: Mapping[str, Any]) -> str | None:
    from onnx import TensorProto

    if len(node.input) < 3 or node.input[2] not in inits:
        return None
    return TensorProto.DataType.Name(inits[node.input[2]].data_type)


def qdq_summary(proto: Any) -> dict[str, Any]:
    """Counts read from the graph: Q/DQ nodes; the zero-point types of activations (QuantizeLinear) and of the
    MatMul/Conv/Gemm weights (DequantizeLinear of an initializer); how many of those compute nodes read a quantized
    input (`quantized_compute`) or only float ones (`float_compute`)."""
    from onnx import TensorProto

    inits = {i.name: i for i in proto.graph.initializer}
    producers = _producers(proto)
    act_types: dict[str, int] = {}
    weight_types: dict[str, int] = {}
    n_q = n_dq = quantized = floating = 0
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear":
            n_q += 1
            t = str(_zero_point_type(proto, node, inits))
            act_types[t] = act_types.get(t, 0) + 1
        elif node.op_type == "DequantizeLinear":
            n_dq += 1
        elif node.op_type in COMPUTE_OPS:
            dqs = [producers[x] for x in node.input if x in producers and producers[x].op_type == "DequantizeLinear"]
            quantized += bool(dqs)
            floating += not dqs
            for dq in dqs:
                src = inits.get(dq.input[0])
                if src is not None and src.data_type != TensorProto.INT32:  # int32: a bias
                    t = TensorProto.DataType.Name(src.data_type)
                    weight_types[t] = weight_types.get(t, 0) + 1
    return {"quantize_nodes": n_q, "dequantize_nodes": n_dq, "weight_types": weight_types,
            "activation_types": act_types, "quantized_compute": quantized, "float_compute": floating}
