"""Units: their kinds, the activations each observes, how they are found in a component, and their bytes.

A unit is one `Conv2d`, one attention module (its q/k/v/out linears plus the attention math), or one `Linear`
outside attention. The ground floor: imports no stage and no option.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from anna.errors import AnnaError

KINDS = ("conv", "attention", "linear")

# The activation tensors that a quantized unit observes and stores one scale for, by kind. For attention:
# the hidden states (q input), the context (k/v input; the same tensor in self-attention), the out-projection input,
# and Q, K, V and the softmax probabilities of the attention math.
ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "conv": ("input",),
    "linear": ("input",),
    "attention": ("input", "context", "out_in", "q", "k", "v", "p"),
}


def is_attention(module: nn.Module) -> bool:
    """diffusers `Attention`, and transformers attention blocks (CLIPAttention, BertAttention, ...)."""
    return type(module).__name__.endswith("Attention") and any(isinstance(m, nn.Linear) for m in module.modules())


def unit_modules(component: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """(name, kind, module) for every unit, in module order. The outermost attention module wins."""
    units: list[tuple[str, str, nn.Module]] = []
    inside: list[str] = []
    for name, module in component.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if is_attention(module):
            units.append((name, "attention", module))
            inside.append(name)
        elif isinstance(module, nn.Conv2d):
            units.append((name, "conv", module))
        elif isinstance(module, nn.Linear):
            units.append((name, "linear", module))
    return units


def quantized_weights(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The Linear/Conv2d weights inside a unit, relative names."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return [("weight", module.weight)]
    return [
        (f"{n}.weight" if n else "weight", m.weight)
        for n, m in module.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]


def unit_bytes(module: nn.Module, kind: str, storage: Storage | None) -> int:
    """Real bytes of one unit under a storage scheme (None: FP16)."""
    total_params = sum(p.numel() for p in module.parameters())
    if storage is None:
        return 2 * total_params
    weights = quantized_weights(module)
    n_weight = sum(w.numel() for _, w in weights)
    n_channels = sum(w.shape[0] for _, w in weights)
    return (
        storage.weight_bytes * n_weight
        + storage.channel_bytes * n_channels
        + 2 * (total_params - n_weight)
        + storage.activation_bytes * len(ACTIVATIONS[kind])
    )


def tensor_bytes_fp16(component: nn.Module) -> int:
    """Every tensor of the component in FP16: floating parameters and buffers at 2 bytes, others at their size."""
    total = 0
    for t in list(component.parameters()) + list(component.buffers()):
        total += t.numel() * (2 if t.is_floating_point() else t.element_size())
    return total


@dataclass(frozen=True)
class Storage:
    """How a quantized unit is stored, in bytes.

    Every Linear/Conv weight of the unit costs `weight_bytes` per element plus `channel_bytes` per output channel
    (scale, and zero point where there is one); each quantized activation tensor costs `activation_bytes`. Every
    other tensor of the unit (biases, norms) stays FP16.
    """

    weight_bytes: int
    channel_bytes: int
    activation_bytes: int


def check_unit_names(names: Iterable[str], known: Iterable[str], where: str) -> None:
    """The one check that a plan names only units that ``where`` has: an ``AnnaError`` naming the first unknown unit,
    with the closest known names."""
    known = list(known)
    have = set(known)
    unknown = [n for n in names if n not in have]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise AnnaError(f"plan names {len(unknown)} unit(s) that {where} does not have, e.g. '{unknown[0]}'{hint}: "
                        "is it a plan for another model or component?")


def nonfinite_weights(module: nn.Module) -> list[tuple[str, int]]:
    """``(name, count)`` of every parameter or floating buffer of ``module`` holding NaN or Inf values."""
    found = []
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.is_floating_point() and t.device.type != "meta":
                bad = int((~torch.isfinite(t)).sum())
                if bad:
                    found.append((name, bad))
    return found
