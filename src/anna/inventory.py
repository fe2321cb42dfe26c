"""The inventory of a component: its units with their bytes under every option, and the totals (see `anna.units`).

A unit is one `Conv2d`, one attention module (its q/k/v/out linears plus the attention math), or one `Linear`
outside attention. Every tensor that belongs to no unit (norms, embeddings, stray biases) counts as FP16.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from anna.adapters.base import Model
from anna.errors import AnnaError
from anna.options.registry import FP16, canonical_option, get_option, option_bytes, option_names
from anna.units import quantized_weights, tensor_bytes_fp16, unit_modules


@dataclass(frozen=True)
class UnitInfo:
    """One unit: its name (module path within the component), kind, parameter count and bytes per option."""

    name: str
    kind: str
    params: int
    weights: tuple[str, ...]  # quantized weight tensors, relative to the unit (e.g. "to_q.weight")
    bytes: dict[str, int] = field(hash=False)


def canonical_assignment(
    inventory: Inventory, assignment: Mapping[str, str], bag: Sequence[str] | None = None
) -> dict[str, str]:
    """Each unit's option under its canonical name (`registry.canonical_option`) when that one is in `bag` (default:
    any): an option that equals another on the unit's kind (an attention-only variant on a Linear or Conv2d unit) is
    named as that one. Same tensors, same bytes; the plan reads plainly."""
    kinds = {u.name: u.kind for u in inventory.units}
    out = {}
    for u, o in assignment.items():
        c = canonical_option(o, kinds[u]) if u in kinds else o
        out[u] = c if bag is None or c in bag else o
    return out


def match_patterns(names: Sequence[str], patterns: Iterable[str], what: str = "pattern") -> set[str]:
    """Names matched by any glob pattern. A pattern that matches nothing is an error listing the closest names."""
    matched: set[str] = set()
    for pattern in patterns:
        hits = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.3)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise AnnaError(f"{what} '{pattern}' matches no unit{hint}")
        matched |= hits
    return matched


@dataclass
class Inventory:
    """The units of one component, with their bytes per option, and the component's FP16 total."""

    model: str
    component: str
    units: list[UnitInfo]
    total_params: int
    total_bytes_fp16: int

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.units]

    @property
    def base_bytes(self) -> int:
        """Bytes that no decision changes: every tensor outside the units, in FP16."""
        return self.total_bytes_fp16 - sum(u.bytes[FP16] for u in self.units)

    def unit(self, name: str) -> UnitInfo:
        for u in self.units:
            if u.name == name:
                return u
        raise AnnaError(f"unknown unit '{name}' in {self.model}/{self.component}")

    def plan_bytes(self, assignment: Mapping[str, str]) -> int:
        """Bytes of the component when each unit uses `assignment[name]` (missing units: FP16)."""
        unknown = set(assignment) - set(self.names)
        if unknown:
            raise AnnaError(f"plan names units that {self.model}/{self.component} does not have: {sorted(unknown)[:5]}")
        total = self.base_bytes
        for u in self.units:
            opt = assignment.get(u.name, FP16)
            if opt not in u.bytes:
                get_option(opt)  # raises for an unknown name
                raise AnnaError(f"option '{opt}' has no size for unit {u.name}")
            total += u.bytes[opt]
        return total

    def size_ratio(self, assignment: Mapping[str, str]) -> float:
        return self.plan_bytes(assignment) / self.total_bytes_fp16

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "component": self.component,
            "total_params": self.total_params,
            "total_bytes_fp16": self.total_bytes_fp16,
            "units": [{"name": u.name, "kind": u.kind, "params": u.params, "bytes": u.bytes} for u in self.units],
        }


def build_inventory(
    model: Model,
    component: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    options: Sequence[str] | None = None,
) -> Inventory:
    """Discover the units of a component and their bytes under every option (all registered ones by default)."""
    component = component or model.default_component
    module = model.component(component)
    found = unit_modules(module)
    names = [n for n, _, _ in found]
    keep = match_patterns(names, include, "include pattern") if include else set(names)
    keep -= match_patterns(names, exclude, "exclude pattern") if exclude else set()
    opts = list(options or option_names())

    def sizes(mod: nn.Module, kind: str) -> dict[str, int]:
        """Bytes per option; with every registered option (no `options` given), an option that cannot quantize this
        unit (an attention layout it does not know) is left out, and using it on the unit is an error."""
        out = {}
        for opt in opts:
            try:
                out[opt] = option_bytes(mod, kind, opt)
            except AnnaError:
                if options:
                    raise
        return out
    units = [
        UnitInfo(
            name=name,
            kind=kind,
            params=sum(p.numel() for p in mod.parameters()),
            weights=tuple(n for n, _ in quantized_weights(mod)),
            bytes=sizes(mod, kind),
        )
        for name, kind, mod in found
        if name in keep
    ]
    return Inventory(
        model=model.name,
        component=component,
        units=units,
        total_params=sum(p.numel() for p in module.parameters()),
        total_bytes_fp16=tensor_bytes_fp16(module),
    )
