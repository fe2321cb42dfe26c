"""A reversible quantizer for analysis: quantize some units of a component, run, put the originals back.

The error model needs thousands of single-unit trials; each trial is a reversible `QuantHandle` that is undone on exit.
A trial's wrappers keep their dequantized weights (`cache_weights`): a trial runs on many cached inputs, and is short.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from torch import nn

from anna.errors import AnnaError
from anna.options.handle import QuantHandle
from anna.options.memo import OutputMemo
from anna.options.registry import FP16
from anna.options.wrappers import cache_weights, share_outputs
from anna.stats import ActStats


class UnitQuantizer:
    """`quantizer(assignment)` is a context manager under which the named units run quantized."""

    def __init__(self, component: nn.Module, stats: Mapping[str, Mapping[str, ActStats]]) -> None:
        self.component = component
        self.stats = stats
        self.units = QuantHandle(component).units

    @contextmanager
    def __call__(self, assignment: Mapping[str, str]) -> Iterator[None]:
        with QuantHandle(self.component, units=self.units) as handle:
            for name, option in assignment.items():
                if option == FP16:
                    continue
                if name not in self.stats:
                    handle.unit(name)
                    raise AnnaError(f"no calibration statistics for unit '{name}'")
                cache_weights(handle.quantize_unit(name, option, self.stats[name]))
            yield

    @contextmanager
    def unit_quantized(self, name: str, option: str, memo: OutputMemo | None = None) -> Iterator[nn.Module]:
        """One unit quantized with ``option`` for the context, yielded to run alone on the unit's own inputs. With
        ``memo``, its wrappers share outputs with the unit's other trials that use the same memo."""
        if name not in self.stats:
            raise AnnaError(f"no calibration statistics for unit '{name}'")
        with QuantHandle(self.component, units=self.units) as handle:
            module = cache_weights(handle.quantize_unit(name, option, self.stats[name]))
            yield module if memo is None else share_outputs(module, memo)
