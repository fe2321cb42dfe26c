"""Quantized unit wrappers. They hold the stored tensors of a unit and call the scheme's pure functions.

- ``QuantLinear`` / ``QuantConv2d`` replace a ``Linear`` / ``Conv2d`` unit: the input is fake-quantized with its
  calibrated scale, the weight is dequantized from its codes, and the op runs in the input's dtype (simulated
  quantization, any device). ``QuantLinear`` can instead run the real FP8 matmul (``quant.fp8_linear``,
  ``torch._scaled_mm``): see ``set_fp8_matmul``.
- An attention unit stays the same module: its q/k/v/out linears become weight-only ``QuantLinear``s, and an
  ``ActQuantizer`` child (``act_quant``) is installed as its tap (``anna.attention.set_tap``), which fake-quantizes
  every activation of ``ACTIVATIONS["attention"]``.

A wrapper's buffers hold exactly what the checkpoint stores (codes, fp32 scales, zero points, FP16 biases): they follow
``.to(device)`` but never change dtype, so ``model.half()`` cannot round a scale. Every other tensor inside a quantized
unit (a norm inside an attention module) is rounded to FP16 values in place, because the checkpoint stores it in FP16.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anna.attention import set_tap
from anna.errors import AnnaError
from anna.options.memo import OutputMemo, SharedLinear, tensors_digest
from anna.options.quant import fp8_linear, scaled_mm_available
from anna.options.schemes import Scheme, TensorSpec
from anna.units import ACTIVATIONS, quantized_weights

OPTION_ATTR = "anna_option"
"""Attribute that marks the root module of a quantized unit with its option name."""


def cache_weights(module: nn.Module) -> nn.Module:
    """Let every wrapper in ``module`` keep its dequantized weight between calls: a short-lived unit run on many
    inputs (an analysis trial) dequantizes once, at the memory of a float copy of its weights. Returns ``module``."""
    for m in module.modules():
        if isinstance(m, QuantModule):
            m.cache_weight = True
    return module


def share_outputs(module: nn.Module, memo: OutputMemo) -> nn.Module:
    """Let every ``QuantLinear`` in ``module`` take its output from ``memo`` when a wrapper with the same stored
    tensors already ran on an equal input, and record its outputs there (see ``anna.options.memo``); a plain
    ``Linear`` inside it (a projection kept in FP16) is replaced by a ``SharedLinear``. For a trial's unit only (a
    copy that is thrown away). Returns ``module``."""
    for name, m in list(module.named_modules()):
        if isinstance(m, QuantLinear):
            m.memo = memo
        elif type(m) is nn.Linear and name and not (m._forward_hooks or m._forward_pre_hooks):
            _replace(module, name, SharedLinear.of(m, memo))
    return module


def unit_option(module: nn.Module) -> str | None:
    """The option a unit module was quantized with, or None when it is not quantized."""
    return getattr(module, OPTION_ATTR, None)


def _check_state(state: Mapping[str, Tensor], spec: Mapping[str, TensorSpec], where: str) -> None:
    """Every tensor of ``spec`` is in ``state`` with its dtype and shape, and ``state`` holds nothing else."""
    missing = [k for k in spec if k not in state]
    if missing:
        raise AnnaError(f"{where}: missing tensor(s) {', '.join(missing)}")
    extra = sorted(set(state) - set(spec))
    if extra:
        raise AnnaError(f"{where}: unexpected tensor(s) {', '.join(extra[:5])}")
    for key, (dtype, shape) in spec.items():
        t = state[key]
        if t.dtype != dtype or tuple(t.shape) != tuple(shape):
            raise AnnaError(
                f"{where}: tensor '{key}' is {t.dtype} {tuple(t.shape)}, expected {dtype} {tuple(shape)}"
            )


def _sub(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Entries of ``state`` under ``prefix`` (with a trailing dot), the prefix stripped."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


class QuantModule(nn.Module):
    """Base of the wrappers: registered buffers are the stored tensors, moved by ``.to(device)`` but never re-typed."""

    def __init__(self, scheme: Scheme) -> None:
        super().__init__()
        self.scheme = scheme
        self.cache_weight = False  # keep the dequantized weight between calls (see `cache_weights`)
        self._dequantized: Tensor | None = None

    def _load(self, state: Mapping[str, Tensor], spec: Mapping[str, TensorSpec], where: str) -> None:
        _check_state(state, spec, where)
        for key in spec:
            self.register_buffer(key, state[key].detach().clone())
        self._dequantized = None

    def weight_for(self, dtype: torch.dtype) -> Tensor:
        """The weight dequantized from its codes in ``dtype``; kept for the next call when ``cache_weight`` is set."""
        w = self._dequantized
        if w is None or w.dtype != dtype:
            w = self.scheme.dequantize_weight(self._parts("weight"), dtype)
            self._dequantized = w if self.cache_weight else None
        return w

    def _parts(self, prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: b for k, b in self._buffers.items() if k.startswith(prefix) and b is not None}

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> QuantModule:
        self._dequantized = None
        own = {k: b for k, b in self._buffers.items() if b is not None}
        for k in own:
            self._buffers[k] = None
        try:
            super()._apply(fn, recurse)
        finally:
            for k, b in own.items():
                device = fn(torch.empty(0, device=b.device)).device
                self._buffers[k] = b.to(device)
        return self


class QuantLinear(QuantModule):
    """A quantized ``Linear``: weight codes per output channel, input fake-quantized per tensor (unless weight-only)."""

    def __init__(
        self,
        scheme: Scheme,
        linear: nn.Linear,
        state: Mapping[str, Tensor],
        *,
        quantize_input: bool = True,
        where: str = "linear",
    ) -> None:
        super().__init__(scheme)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.quantize_input = quantize_input
        self.fp8_matmul = False
        spec = {f"weight{s}": v for s, v in scheme.weight_spec(tuple(linear.weight.shape)).items()}
        if quantize_input:
            spec |= {f"input{s}": v for s, v in scheme.activation_spec().items()}
        if linear.bias is not None:
            spec["bias"] = (torch.float16, (linear.out_features,))
        self._load(state, spec, where)
        self.has_bias = linear.bias is not None
        self.memo: OutputMemo | None = None  # see `share_outputs`
        self._digest: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.memo is None:
            return self._forward(x)
        if self._digest is None:
            self._digest = tensors_digest(((k, b) for k, b in self._buffers.items() if b is not None),
                                          self.scheme.name, self.quantize_input)
        key = f"{self._digest}:{self.fp8_matmul}"
        out = self.memo.get(key, x)
        if out is None:
            out = self._forward(x)
            self.memo.put(key, x, out)
        return out

    def _forward(self, x: Tensor) -> Tensor:
        bias = self._buffers["bias"] if self.has_bias else None
        if self.fp8_matmul:
            return fp8_linear(x, self._buffers["weight"], self._buffers["input_scale"],
                              self._buffers["weight_scale"], bias, out_dtype=x.dtype)
        if self.quantize_input:
            x = self.scheme.fake_quant_activation(x, self._parts("input"))
        w = self.weight_for(x.dtype)
        return F.linear(x, w, None if bias is None else bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme.name}, "
                f"quantize_input={self.quantize_input}, fp8_matmul={self.fp8_matmul}")


class QuantConv2d(QuantModule):
    """A quantized ``Conv2d``: weight codes per output channel, input fake-quantized per tensor (unless weight-only)."""

    def __init__(
        self,
        scheme: Scheme,
        conv: nn.Conv2d,
        state: Mapping[str, Tensor],
        *,
        quantize_input: bool = True,
        where: str = "conv",
    ) -> None:
        super().__init__(scheme)
        self.quantize_input = quantize_input
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups, self.padding_mode = conv.dilation, conv.groups, conv.padding_mode
        self._reversed_padding_repeated_twice = list(conv._reversed_padding_repeated_twice)
        spec = {f"weight{s}": v for s, v in scheme.weight_spec(tuple(conv.weight.shape)).items()}
        if quantize_input:
            spec |= {f"input{s}": v for s, v in scheme.activation_spec().items()}
        if conv.bias is not None:
            spec["bias"] = (torch.float16, (conv.out_channels,))
        self._load(state, spec, where)
        self.has_bias = conv.bias is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.quantize_input:
            x = self.scheme.fake_quant_activation(x, self._parts("input"))
        w = self.weight_for(x.dtype)
        bias = self._buffers["bias"].to(x.dtype) if self.has_bias else None
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, w, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, scheme={self.scheme.name}, quantize_input={self.quantize_input}")


class ActQuantizer(QuantModule):
    """The tap of a quantized attention unit: ``(name, tensor) -> fake-quantized tensor``, one scale per name."""

    def __init__(self, scheme: Scheme, names: Sequence[str], state: Mapping[str, Tensor], where: str = "attention"):
        super().__init__(scheme)
        self.names = tuple(names)
        spec = {f"{a}{s}": v for a in self.names for s, v in scheme.activation_spec().items()}
        self._load(state, spec, where)

    def forward(self, name: str, x: Tensor) -> Tensor:
        if name not in self.names:
            raise KeyError(f"no quantization parameters for attention activation '{name}'")
        return self.scheme.fake_quant_activation(x, self._parts(name))

    def tap(self, name: str, x: Tensor) -> Tensor:
        """``anna.attention.Tap``: a bound method, not a module, so that installing it registers no sub-module."""
        return self.forward(name, x)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme.name}, activations={','.join(self.names)}"


# Building quantized units from their state


def weight_state(scheme: Scheme, prefix: str, w: Tensor) -> dict[str, Tensor]:
    """Stored tensors of one weight, keyed ``prefix + suffix`` (``prefix`` is e.g. "weight" or "to_q.weight")."""
    return {f"{prefix}{s}": t for s, t in scheme.quantize_weight(w).items()}


def activation_state(scheme: Scheme, name: str, lo: float, hi: float) -> dict[str, Tensor]:
    return {f"{name}{s}": t for s, t in scheme.activation_qparams(lo, hi).items()}


def quantize_unit_state(
    scheme: Scheme, module: nn.Module, kind: str, ranges: Mapping[str, tuple[float, float]]
) -> dict[str, Tensor]:
    """The stored tensors of a unit: quantized weights, activation parameters and every other tensor in FP16.

    Keys are relative to the unit and equal the quantized unit's ``unit_state`` keys.
    """
    act_prefix = "act_quant." if kind == "attention" else ""
    state: dict[str, Tensor] = {}
    weights = quantized_weights(module)
    for name, w in weights:
        state |= weight_state(scheme, name, w)
    quantized = {id(w) for _, w in weights}
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if id(t) not in quantized:
            state[name] = t.detach().to(torch.float16) if t.is_floating_point() else t.detach().clone()
    for a in ACTIVATIONS[kind]:
        lo, hi = ranges[a]
        state |= activation_state(scheme, f"{act_prefix}{a}", lo, hi)
    return state


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def build_quantized_unit(
    scheme: Scheme, option: str, module: nn.Module, kind: str, state: Mapping[str, Tensor], where: str
) -> nn.Module:
    """The quantized unit for ``module`` (the original, FP unit) from its stored tensors.

    Linear / Conv2d: a new wrapper. Attention: ``module`` itself, modified in place (weight-only quantized linears,
    other tensors set to the stored FP16 values, the ``act_quant`` tap installed).
    """
    if unit_option(module) is not None:
        raise AnnaError(f"{where} is already quantized ({unit_option(module)})")
    device = next((t.device for t in list(module.parameters()) + list(module.buffers())), torch.device("cpu"))
    state = {k: v.to(device) for k, v in state.items()}
    if kind in ("linear", "conv"):
        cls: Any = QuantLinear if kind == "linear" else QuantConv2d
        expected = nn.Linear if kind == "linear" else nn.Conv2d
        if not isinstance(module, expected):
            raise AnnaError(f"{where} is a {type(module).__name__}, not a {expected.__name__}")
        wrapper = cls(scheme, module, state, where=where)
        setattr(wrapper, OPTION_ATTR, option)
        return wrapper
    if kind != "attention":
        raise AnnaError(f"{where}: unknown unit kind '{kind}'")
    return _quantize_attention(scheme, option, module, state, where)


def check_plain_tensors(
    state: Mapping[str, Tensor], known: set[str], others: Sequence[tuple[str, Tensor]], where: str
) -> None:
    """A unit's stored tensors: none outside `known`, and each of its plain (unquantized) tensors `others` present in
    FP16 (or its own dtype when not floating) with its shape."""
    extra = sorted(set(state) - known)
    if extra:
        raise AnnaError(f"{where}: unexpected tensor(s) {', '.join(extra[:5])}")
    for name, t in others:
        if name not in state:
            raise AnnaError(f"{where}: missing tensor {name}")
        want = torch.float16 if t.is_floating_point() else t.dtype
        if state[name].dtype != want or state[name].shape != t.shape:
            raise AnnaError(f"{where}: tensor '{name}' is {state[name].dtype} {tuple(state[name].shape)}, "
                            f"expected {want} {tuple(t.shape)}")


def _quantize_attention(
    scheme: Scheme, option: str, module: nn.Module, state: Mapping[str, Tensor], where: str
) -> nn.Module:
    paths = [w[: -len(".weight")] if w.endswith(".weight") else "" for w, _ in quantized_weights(module)]
    if "" in paths:
        raise AnnaError(f"{where}: an attention unit must hold its weights in sub-modules")
    inside = tuple(f"{p}." for p in paths)
    others = [(n, t) for n, t in list(module.named_parameters()) + list(module.named_buffers())
              if not n.startswith(inside)]
    act_names = ACTIVATIONS["attention"]
    known = {f"act_quant.{a}{s}" for a in act_names for s in scheme.activation_spec()} | {n for n, _ in others}
    wrapped: list[tuple[str, nn.Module]] = []
    for path in paths:
        sub = module.get_submodule(path)
        cls: Any = QuantLinear if isinstance(sub, nn.Linear) else QuantConv2d
        sub_state = _sub(state, f"{path}.")
        known |= {f"{path}.{k}" for k in sub_state}
        wrapped.append((path, cls(scheme, sub, sub_state, quantize_input=False, where=f"{where}.{path}")))
    check_plain_tensors(state, known, others, where)
    act = ActQuantizer(scheme, act_names, _sub(state, "act_quant."), where=where)
    with torch.no_grad():
        for name, t in others:
            t.copy_(state[name].to(t.device))
    for path, new in wrapped:
        _replace(module, path, new)
    module.add_module("act_quant", act)
    set_tap(module, act.tap)
    setattr(module, OPTION_ATTR, option)
    return module


def unit_state(module: nn.Module) -> dict[str, Tensor]:
    """The stored tensors of a quantized unit, as the checkpoint holds them (relative keys).

    Wrapper buffers as they are; every other floating tensor of the unit in FP16, integer tensors as they are.
    """
    if unit_option(module) is None:
        raise AnnaError(f"{type(module).__name__} is not a quantized unit")
    out: dict[str, Tensor] = {}
    for mname, m in module.named_modules():
        prefix = f"{mname}." if mname else ""
        own = isinstance(m, QuantModule)
        for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            keep = own or not t.is_floating_point()
            out[prefix + name] = t.detach() if keep else t.detach().to(torch.float16)
    return out


def set_fp8_matmul(module: nn.Module, enabled: bool = True, dtype: torch.dtype = torch.float32) -> int:
    """Switch the FP8 ``QuantLinear``s under ``module`` that quantize their input to the real FP8 matmul.

    Checks ``scaled_mm_available`` on each wrapper's device for ``dtype`` first: no silent fallback. Returns how
    many wrappers were switched.
    """
    n = 0
    for name, m in module.named_modules():
        if isinstance(m, QuantLinear) and m.quantize_input and m.scheme.name == "fp8":
            device = m._buffers["weight"].device
            if enabled and not scaled_mm_available(device, dtype):
                raise AnnaError(f"{name or 'module'}: the FP8 matmul (torch._scaled_mm) is not available on "
                                f"{device} for {dtype}")
            m.fp8_matmul = enabled
            n += 1
    return n
