"""What the quantizing options share: unit stats -> activation ranges -> stored tensors -> a quantized unit.

A concrete option says its number format (a ``Scheme``) and how it reads an activation range from calibration
statistics (``activation_range``); everything else is here, so the options stay small.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from anna.errors import AnnaError
from anna.options.schemes import Scheme
from anna.options.wrappers import build_quantized_unit, quantize_unit_state
from anna.stats import ActStats
from anna.units import ACTIVATIONS

# Activations that keep their full calibrated range under every option: the softmax probabilities lie in [0, 1] and
# their largest values carry the attention; clipping them to a percentile (p90 of a softmax is tiny) destroys it.
FULL_RANGE = frozenset({"p"})


class QuantizingOption:
    """Mixin for registered options that quantize a unit. Subclasses are frozen dataclasses with ``name`` and
    ``scheme`` fields and implement ``activation_range``."""

    name: str
    scheme: Scheme

    def activation_range(self, stats: ActStats) -> tuple[float, float]:
        """The calibrated range [lo, hi] that this option quantizes an activation to."""
        raise NotImplementedError

    def ranges(self, kind: str, stats: Mapping[str, ActStats], where: str = "unit") -> dict[str, tuple[float, float]]:
        """The range of every activation of a unit of this kind; missing statistics are an error naming them."""
        if kind not in ACTIVATIONS:
            raise AnnaError(f"{where}: unknown unit kind '{kind}'")
        missing = [a for a in ACTIVATIONS[kind] if stats.get(a) is None]
        if missing:
            raise AnnaError(f"{where}: no calibration statistics for activation(s) {', '.join(missing)}")
        return {
            a: (stats[a].min, stats[a].max) if a in FULL_RANGE else self.activation_range(stats[a])
            for a in ACTIVATIONS[kind]
        }

    def quantize(self, module: nn.Module, kind: str, stats: Mapping[str, ActStats], where: str = "unit"
                 ) -> dict[str, Tensor]:
        """The quantized unit's stored tensors (what the checkpoint holds for it), keyed relative to the unit."""
        return quantize_unit_state(self.scheme, module, kind, self.ranges(kind, stats, where))

    def wrap(self, module: nn.Module, kind: str, state: Mapping[str, Tensor], where: str = "unit") -> nn.Module:
        """The quantized unit built from the original ``module`` and its stored tensors (validated)."""
        return build_quantized_unit(self.scheme, self.name, module, kind, state, where)
