"""Taps on attention units: one callback sees (and may replace) every activation of the attention math.

`set_tap(unit, tap)` makes an attention unit call `tap(name, tensor)` for each name in `ACTIVATIONS["attention"]`:
- "input": the hidden states fed to the query projection;
- "context": the states fed to the key and value projections (the same tensor in self-attention);
- "q", "k", "v": the projected, head-split query, key and value;
- "p": the softmax probabilities;
- "out_in": the merged heads fed to the output projection.
The tap returns the tensor to use: calibration observes and returns it unchanged, quantization returns it
fake-quantized. A tap must be a plain callable (a function or a bound method), not an `nn.Module`: on transformers
attention it is stored on every sub-module. diffusers `Attention` gets an attention processor with explicit math (the
probabilities exist, in query chunks of bounded size); transformers attention (CLIP, BERT) gets pre-hooks on its
projections and a registered attention function that routes tapped modules through the same explicit math.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Tap = Callable[[str, Tensor], Tensor]

_FN_NAME = "anna_tapped"
# Upper bound on the elements of one chunk of attention scores (batch x heads x query rows x keys).
MAX_SCORE_ELEMENTS = 1 << 26


def tapped_attention(q: Tensor, k: Tensor, v: Tensor, tap: Tap, scale: float, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T * scale + mask) v on (batch, heads, seq, dim) tensors, tapping q, k, v and p.
    Query rows are processed in chunks so the probabilities never exceed MAX_SCORE_ELEMENTS at once."""
    q, k, v = tap("q", q), tap("k", k), tap("v", v)
    b, h, n_q, _ = q.shape
    rows = max(1, MAX_SCORE_ELEMENTS // max(1, b * h * k.shape[-2]))
    out = []
    for start in range(0, n_q, rows):
        scores = torch.matmul(q[:, :, start : start + rows], k.transpose(-1, -2)) * scale
        if mask is not None:
            m = mask if mask.shape[-2] == 1 else mask[..., start : start + rows, :]
            scores = scores + m
        p = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out.append(torch.matmul(tap("p", p), v))
    return torch.cat(out, dim=2) if len(out) > 1 else out[0]


def split_heads(
    attn: nn.Module, query: Tensor, key: Tensor, value: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None, int]:
    """(batch, seq, heads*dim) to (batch, heads, seq, dim) with the module's q/k norms applied, as diffusers does;
    returns q, k, v and the head dimension."""
    b, head_dim = query.shape[0], key.shape[-1] // attn.heads
    q = query.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    k = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    v = None if value is None else value.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k, v, head_dim


def attention_scale(attn: nn.Module, head_dim: int) -> float:
    return attn.scale if getattr(attn, "scale", None) is not None else 1 / math.sqrt(head_dim)


class TappedAttnProcessor:
    """A diffusers attention processor (the AttnProcessor2_0 flow) with explicit, tapped attention math."""

    def __init__(self, tap: Tap) -> None:
        self.tap = tap

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> Tensor:
        tap = self.tap
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(tap("input", hidden_states))
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        context = tap("context", encoder_hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)

        query, key, value, head_dim = split_heads(attn, query, key, value)
        hidden_states = tapped_attention(query, key, value, tap, attention_scale(attn, head_dim), attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](tap("out_in", hidden_states.to(query.dtype)))
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _is_diffusers_attention(module: nn.Module) -> bool:
    return hasattr(module, "set_processor") and hasattr(module, "to_q")


# transformers: projection names per family (query, key, value, output).
_PROJECTIONS = (
    ("q_proj", "k_proj", "v_proj", "out_proj"),  # CLIP
    ("self.query", "self.key", "self.value", "output.dense"),  # BERT
)


_DIFFUSERS_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def projection_paths(unit: nn.Module) -> dict[str, str]:
    """The unit-relative module paths of an attention unit's projections, keyed "q", "k", "v", "o" (the output
    projection). Raises TypeError for an attention module of unknown layout."""
    subs = dict(unit.named_modules())
    for names in (_DIFFUSERS_PROJECTIONS, *_PROJECTIONS) if _is_diffusers_attention(unit) else _PROJECTIONS:
        if all(n in subs for n in names):
            return dict(zip(("q", "k", "v", "o"), names, strict=True))
    raise TypeError(f"{type(unit).__name__}: unsupported attention module (no q/k/v/out projections found)")


def _projections(unit: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    subs = dict(unit.named_modules())
    return tuple(subs[p] for p in projection_paths(unit).values())  # type: ignore[return-value]


def _tapped_transformers_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The registered transformers attention function: tapped math for tapped modules, the original otherwise."""
    tap = getattr(module, "_anna_tap", None)
    if tap is None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        original = getattr(module.config, "_anna_original_attn", "eager")
        fn = ALL_ATTENTION_FUNCTIONS.get(original) if original != "eager" else None
        if fn is None:
            from transformers.models.bert.modeling_bert import eager_attention_forward as fn
        return fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = tapped_attention(query, key, value, tap, scale, attention_mask)
    return out.transpose(1, 2).contiguous(), None


def _use_tapped_function(config: object) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if _FN_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(_FN_NAME, _tapped_transformers_attention)
        AttentionMaskInterface.register(_FN_NAME, eager_mask)  # an additive float mask, as the explicit math needs
    current = config._attn_implementation
    if current != _FN_NAME:
        config._anna_original_attn = current or "eager"
        config._attn_implementation_internal = _FN_NAME


def set_tap(unit: nn.Module, tap: Tap | None) -> None:
    """Install `tap` on an attention unit, or remove it (None) and restore the original behaviour."""
    if _is_diffusers_attention(unit):
        if tap is None:
            original = getattr(unit, "_anna_original_processor", None)
            if original is not None:
                unit.set_processor(original)
                del unit._anna_original_processor
        else:
            if not hasattr(unit, "_anna_original_processor"):
                unit._anna_original_processor = unit.processor
            unit.set_processor(TappedAttnProcessor(tap))
        return
    q, k, v, o = _projections(unit)
    for handle in getattr(unit, "_anna_tap_handles", []):
        handle.remove()
    unit._anna_tap_handles = []
    for m in unit.modules():
        m._anna_tap = tap
    if tap is None:
        return
    config = getattr(unit, "config", None) or next(m.config for m in unit.modules() if hasattr(m, "config"))
    _use_tapped_function(config)
    for proj, name in ((q, "input"), (k, "context"), (v, "context"), (o, "out_in")):
        unit._anna_tap_handles.append(proj.register_forward_pre_hook(_pre_hook(tap, name)))


def _pre_hook(tap: Tap, name: str) -> Callable:
    def hook(module: nn.Module, args: tuple) -> tuple:
        return (tap(name, args[0]), *args[1:])

    return hook
