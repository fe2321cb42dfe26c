"""A reversible quantizer for analysis: quantize some units of a component, run, put the originals back.

`apply` (anna.options.apply) quantizes in place for good; the error model needs thousands of single-unit trials, so
here each trial works on a deep copy of the unit and swaps it in, and the original module returns on exit.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from torch import nn

from anna.calibrate.histogram import ActStats
from anna.errors import AnnaError
from anna.inventory import unit_modules
from anna.options.registry import FP16, quant_option


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


class UnitQuantizer:
    """`quantizer(assignment)` is a context manager under which the named units run quantized."""

    def __init__(self, component: nn.Module, stats: Mapping[str, Mapping[str, ActStats]]) -> None:
        self.component = component
        self.stats = stats
        self.units = {name: (kind, module) for name, kind, module in unit_modules(component)}

    def quantized_copy(self, name: str, option: str) -> nn.Module:
        if name not in self.units:
            raise AnnaError(f"unknown unit '{name}'")
        if name not in self.stats:
            raise AnnaError(f"no calibration statistics for unit '{name}'")
        kind, module = self.units[name]
        opt = quant_option(option)
        clone = copy.deepcopy(module)
        state = opt.quantize(clone, kind, self.stats[name], where=name)
        return opt.wrap(clone, kind, state, where=name)

    @contextmanager
    def __call__(self, assignment: Mapping[str, str]) -> Iterator[None]:
        swapped: list[str] = []
        try:
            for name, option in assignment.items():
                if option == FP16:
                    continue
                _replace(self.component, name, self.quantized_copy(name, option))
                swapped.append(name)
            yield
        finally:
            for name in swapped:
                _replace(self.component, name, self.units[name][1])
