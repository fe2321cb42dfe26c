"""One handle for quantizing a component: the only place where units are swapped.

`QuantHandle(component)` quantizes units from calibration statistics (`quantize_unit`) or from stored tensors
(`load_unit`, for a checkpoint), and sets tensors outside the units (`set_tensors`). Each change is recorded, so
`undo()` puts back the exact original modules and tensor values (a trial, or one checkpoint of many evaluated on the
same pipeline), while `commit()` keeps the quantized component for good and forgets the originals (an export).
Used as a context manager, the handle undoes on exit.

With ``reversible=False`` nothing is recorded and attention units are quantized in place without a copy (the memory
of a one-way apply); ``undo`` is then an error.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from anna.errors import AnnaError
from anna.options.registry import FP16, quant_option
from anna.options.wrappers import unit_option
from anna.units import unit_modules

# A transformers attention unit is switched to anna's attention function through its model's config (shared by every
# layer): a copy of the unit keeps sharing it, and undo restores these settings.
_CONFIG_KEYS = ("_attn_implementation_internal", "_anna_original_attn")
_MISSING = object()


def replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at ``path`` (a dotted module path) under ``root``."""
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


class QuantHandle:
    """Quantize units of one component; undo (reversible) or commit."""

    def __init__(self, component: nn.Module, *, reversible: bool = True,
                 units: dict[str, tuple[str, nn.Module]] | None = None) -> None:
        """``units`` (name -> (kind, module), as `unit_modules` finds them) saves the walk when many handles are made
        on an unchanged component, as the error model's trials do."""
        self.component = component
        self.reversible = reversible
        self.units = units if units is not None else {n: (k, m) for n, k, m in unit_modules(component)}
        self.options: dict[str, str] = {}
        self._modules: dict[str, nn.Module] = {}  # unit -> the original module it replaced
        self._tensors: list[tuple[Tensor, Tensor]] = []  # (tensor set in place, its original value)
        self._configs: list[tuple[Any, dict[str, Any]]] = []  # (model config, its attention settings before)

    def unit(self, name: str) -> tuple[str, nn.Module]:
        """(kind, original module) of a unit, with a clear error for a name the component lacks."""
        if name not in self.units:
            raise AnnaError(f"unknown unit '{name}'")
        return self.units[name]

    def _target(self, name: str) -> tuple[str, nn.Module]:
        kind, module = self.unit(name)
        if name in self.options:
            raise AnnaError(f"unit '{name}' is already quantized ({self.options[name]}) by this handle")
        if unit_option(module) is not None:
            raise AnnaError(f"unit '{name}' is already quantized ({unit_option(module)})")
        if self.reversible and kind == "attention":  # an attention unit is quantized in place: work on a copy
            configs = {id(c): c for m in module.modules() if (c := getattr(m, "config", None)) is not None}
            for config in configs.values():  # shared with the model (its attention function), restored on undo
                if all(config is not c for c, _ in self._configs):
                    self._configs.append((config, {k: config.__dict__.get(k, _MISSING) for k in _CONFIG_KEYS}))
            module = copy.deepcopy(module, memo=dict(configs))
        return kind, module

    def _swap(self, name: str, option: str, new: nn.Module) -> None:
        original = self.units[name][1]
        if new is not original:
            replace_module(self.component, name, new)
        if self.reversible:
            self._modules[name] = original
        self.options[name] = option

    def quantize_unit(self, name: str, option: str, stats: Mapping) -> nn.Module:
        """Quantize unit ``name`` with ``option`` from its calibration statistics; returns the quantized unit."""
        if option == FP16:
            return self.unit(name)[1]
        opt = quant_option(option)
        kind, module = self._target(name)
        state = opt.quantize(module, kind, stats, where=name)
        new = opt.wrap(module, kind, state, where=name)
        self._swap(name, option, new)
        return new

    def load_unit(self, name: str, option: str, state: Mapping[str, Tensor], where: str | None = None) -> nn.Module:
        """Rebuild unit ``name`` as ``option`` from its stored tensors (a checkpoint's); returns the quantized unit."""
        opt = quant_option(option)
        kind, module = self._target(name)
        new = opt.wrap(module, kind, state, where=where or name)
        self._swap(name, option, new)
        return new

    def set_tensors(self, values: Mapping[str, Tensor]) -> None:
        """Copy ``values`` (name -> tensor of the component) into the component's tensors of those names."""
        own = dict(self.component.named_parameters()) | dict(self.component.named_buffers())
        with torch.no_grad():
            for name, value in values.items():
                t = own[name]
                if self.reversible:
                    self._tensors.append((t, t.detach().clone()))
                t.copy_(value.to(t.device))

    def undo(self) -> None:
        """Restore the original modules and tensor values; the component is as it was before the handle."""
        if not self.reversible:
            raise AnnaError("this quantization was applied for good (reversible=False) and cannot be undone")
        for name in reversed(list(self._modules)):
            replace_module(self.component, name, self._modules[name])
        with torch.no_grad():
            for t, value in reversed(self._tensors):
                t.copy_(value)
        for config, before in self._configs:
            for key, value in before.items():
                if value is _MISSING:
                    config.__dict__.pop(key, None)
                else:
                    config.__dict__[key] = value
        self.commit()
        self.options.clear()

    def commit(self) -> None:
        """Keep the quantized component for good; the originals are released."""
        self._modules.clear()
        self._tensors.clear()
        self._configs.clear()

    def __enter__(self) -> QuantHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
                 ) -> None:
        if self.reversible:
            self.undo()
