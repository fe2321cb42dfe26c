"""Graph preprocessing before static quantization: layer-norm fusion and a finite attention-mask fill value.

- `fuse_layer_norms`: onnxruntime.transformers' `FusionLayerNormalization` rewrites the ReduceMean/Sub/Pow/
  ReduceMean/Add/Sqrt/Div/Mul/Add pattern into one standard `LayerNormalization` (so a norm is one op with one output
  range, not nine tensors each given a Q/DQ pair). The dynamo exporter already emits `LayerNormalization` for
  `nn.LayerNorm`, so on its graphs this finds nothing to do; it matters for hand-written norms and older exports.
- `strip_metadata`: the exporter tags each node with its stack trace, FX node and class hierarchy (about 1 KB per
  node); only the module scopes (`pkg.torch.onnx.name_scopes`), which map units to nodes, are kept.
- `fix_mask_fill`: attention masks are built with `-inf` or `finfo.min` (-3.4e38) fill values. Any tensor that holds
  them and flows into a Softmax gets a calibration range of ~1e38 (or inf), which wipes out every value the
  quantizer must represent on that tensor. Those entries are replaced by a finite, moderate value (default -100:
  exp(-100) ~ 4e-44, so the masked probabilities stay zero in fp32, and a uint16 range of ~110 keeps a step of 2e-3).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

MASK_FILL = -100.0
MASK_CUTOFF = -1.0e4
"""Entries at or below this (and -inf) count as a mask fill value."""
_STOP = {"MatMul", "Gemm", "Conv", "ConvTranspose", "LayerNormalization", "GroupNormalization"}


@dataclass(frozen=True)
class PrepReport:
    """What preprocessing changed: fused layer norms, and the mask tensors rewritten (name, entries replaced)."""

    layer_norms_fused: int
    layer_norms: int
    mask_tensors: tuple[tuple[str, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {"layer_norms_fused": self.layer_norms_fused, "layer_norms": self.layer_norms,
                "mask_fill_tensors": [{"name": n, "entries": k} for n, k in self.mask_tensors]}


def fuse_layer_norms(proto: Any) -> int:
    """Fuse decomposed layer norms into `LayerNormalization` in place; returns how many were fused."""
    import logging

    from onnxruntime.transformers.fusion_layernorm import FusionLayerNormalization
    from onnxruntime.transformers.onnx_model import OnnxModel

    before = sum(n.op_type == "LayerNormalization" for n in proto.graph.node)
    logger = logging.getLogger("onnxruntime.transformers")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        wrapped = OnnxModel(proto)
        FusionLayerNormalization(wrapped).apply()
        fused = sum(n.op_type == "LayerNormalization" for n in proto.graph.node) - before
        if fused:
            wrapped.topological_sort()
    finally:
        logger.setLevel(level)
    return fused


KEEP_METADATA = ("pkg.torch.onnx.name_scopes",)


def strip_metadata(proto: Any, keep: tuple[str, ...] = KEEP_METADATA) -> int:
    """Drop node metadata other than `keep`, in place; returns how many entries were dropped."""
    dropped = 0
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key in keep]
        dropped += len(node.metadata_props) - len(kept)
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
    return dropped


def _feeds_softmax(proto: Any, tensor: str, max_depth: int = 12) -> bool:
    """Whether `tensor` reaches a Softmax input through elementwise/shape ops (not through a MatMul/Conv/norm)."""
    consumers: dict[str, list[Any]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    seen = {tensor}
    queue = deque([(tensor, 0)])
    while queue:
        name, depth = queue.popleft()
        for node in consumers.get(name, []):
            if node.op_type == "Softmax":
                return True
            if node.op_type in _STOP or depth >= max_depth:
                continue
            for out in node.output:
                if out and out not in seen:
                    seen.add(out)
                    queue.append((out, depth + 1))
    return False


def _replace(arr: np.ndarray, value: float, cutoff: float) -> tuple[np.ndarray, int]:
    hit = np.isneginf(arr) | (arr <= cutoff)
    count = int(hit.sum())
    if not count:
        return arr, 0
    out = arr.copy()
    out[hit] = value
    return out, count


def fix_mask_fill(proto: Any, value: float = MASK_FILL, cutoff: float = MASK_CUTOFF) -> list[tuple[str, int]]:
    """Replace -inf / very negative entries of constant tensors that flow into a Softmax by `value`, in place.

    Looks at initializers and Constant nodes of floating type. Returns (tensor name, entries replaced) per tensor.
    """
    from onnx import numpy_helper

    if value <= cutoff:
        raise ValueError(f"mask fill value {value} must be above the cutoff {cutoff}")
    changed: list[tuple[str, int]] = []
    for i, init in enumerate(proto.graph.initializer):
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind != "f" or not arr.size:
            continue
        new, count = _replace(arr, value, cutoff)
        if count and _feeds_softmax(proto, init.name):
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(new.astype(arr.dtype), init.name))
            changed.append((init.name, count))
    for node in proto.graph.node:
        if node.op_type != "Constant":
            continue
        for attr in node.attribute:
            if attr.name != "value":
                continue
            arr = numpy_helper.to_array(attr.t)
            if arr.dtype.kind != "f" or not arr.size:
                continue
            new, count = _replace(arr, value, cutoff)
            if count and _feeds_softmax(proto, node.output[0]):
                attr.t.CopyFrom(numpy_helper.from_array(new.astype(arr.dtype), attr.t.name))
                changed.append((node.output[0], count))
    return changed


def preprocess(proto: Any, mask_fill: float = MASK_FILL) -> tuple[Any, PrepReport]:
    """All passes, in place: metadata, layer-norm fusion, then the mask fill value. Returns the proto and a report."""
    strip_metadata(proto)
    fused = fuse_layer_norms(proto)
    masks = fix_mask_fill(proto, mask_fill)
    norms = sum(n.op_type == "LayerNormalization" for n in proto.graph.node)
    return proto, PrepReport(fused, norms, tuple(masks))
