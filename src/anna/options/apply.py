"""Apply a plan to a component in place: each unit becomes its option's quantized unit. Prints a per-unit summary.

Goes through the registry only; no concrete option is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from anna.errors import AnnaError
from anna.options.handle import QuantHandle
from anna.options.registry import FP16, get_option, option_bytes, quant_option
from anna.options.wrappers import unit_option
from anna.stats import ActStats
from anna.units import check_unit_names, unit_bytes, unit_modules

if TYPE_CHECKING:
    from anna.plan import Plan

UnitStats = Mapping[str, ActStats]


@dataclass(frozen=True)
class UnitRow:
    """One unit of an apply: its option, bytes in FP16 and as stored, and the activation ranges used."""

    unit: str
    kind: str
    option: str
    bytes_before: int
    bytes_after: int
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "kind": self.kind, "option": self.option, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "ranges": {k: list(v) for k, v in self.ranges.items()}}


@dataclass
class ApplySummary:
    """What an apply did, unit by unit (units of the component that the plan does not name are not listed)."""

    rows: list[UnitRow]

    @property
    def bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.rows)

    @property
    def bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.rows)

    @property
    def quantized(self) -> list[str]:
        return [r.unit for r in self.rows if r.option != FP16]

    def table(self) -> str:
        """The per-unit table, then one line of totals."""
        width = max([len(r.unit) for r in self.rows] + [4])
        head = f"{'unit':<{width}}  {'kind':<9} {'option':<16} {'bytes fp16':>12} {'bytes after':>12}  range used"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            rng = ""
            if r.ranges:
                first, (lo, hi) = next(iter(r.ranges.items()))
                rng = f"{first} [{lo:.4g}, {hi:.4g}]"
                if len(r.ranges) > 1:
                    rng += f" (+{len(r.ranges) - 1} more)"
            lines.append(f"{r.unit:<{width}}  {r.kind:<9} {r.option:<16} {r.bytes_before:>12,} {r.bytes_after:>12,}  "
                         f"{rng}")
        lines.append("-" * len(head))
        n_q = len(self.quantized)
        ratio = self.bytes_after / self.bytes_before if self.bytes_before else 1.0
        lines.append(f"{n_q} unit(s) quantized, {len(self.rows) - n_q} kept in fp16; unit bytes "
                     f"{self.bytes_before:,} -> {self.bytes_after:,} ({ratio:.4f})")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"units": [r.to_json() for r in self.rows], "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after}


def _assignment(plan: Plan | Mapping[str, str]) -> dict[str, str]:
    if isinstance(getattr(plan, "units", None), Mapping):  # a Plan (anna.plan sits above the options)
        return dict(plan.units)
    if not isinstance(plan, Mapping):
        raise AnnaError(f"a plan must be a Plan or a mapping of unit -> option, not {type(plan).__name__}")
    return dict(plan)


def apply(
    component: nn.Module,
    plan: Plan | Mapping[str, str],
    stats: Mapping[str, UnitStats],
    *,
    echo: Callable[[str], Any] | None = print,
    handle: QuantHandle | None = None,
) -> ApplySummary:
    """Quantize ``component`` in place as ``plan`` says; ``stats[unit][activation]`` are the calibration statistics.

    Units the plan names with ``fp16`` (or does not name) are left untouched. An unknown unit or option, a unit that
    is already quantized, or missing statistics for a unit the plan quantizes is an ``AnnaError``, raised before
    the component is modified. Prints the per-unit summary through ``echo`` (None: silent) and returns it.
    The swaps go through ``handle`` (a reversible ``QuantHandle`` of ``component`` lets the caller undo them);
    without one, they are made for good.
    """
    assignment = _assignment(plan)
    found = {name: (kind, module) for name, kind, module in unit_modules(component)}
    unknown = [n for n in assignment if n not in found]
    if unknown:
        name = unknown[0]
        try:
            if unit_option(component.get_submodule(name)) is not None:
                raise AnnaError(f"unit '{name}' is already quantized ({unit_option(component.get_submodule(name))})")
        except AttributeError:
            pass
        check_unit_names(assignment, found, "this component")
    for opt_name in sorted(set(assignment.values())):
        get_option(opt_name)
    to_quantize = [n for n in found if assignment.get(n, FP16) != FP16]
    missing = [n for n in to_quantize if n not in stats]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise AnnaError(f"no calibration statistics for unit '{missing[0]}'{more}, which the plan quantizes with "
                        f"{assignment[missing[0]]}")

    # First every state (nothing modified yet, so an error leaves the component as it was), then the swaps.
    rows: list[UnitRow] = []
    states = {}
    for name, (kind, module) in found.items():
        if name not in assignment:
            continue
        opt_name = assignment[name]
        before = unit_bytes(module, kind, None)
        if opt_name == FP16:
            rows.append(UnitRow(name, kind, FP16, before, before))
            continue
        opt = quant_option(opt_name)
        ranges = opt.ranges(kind, stats[name], where=name)
        states[name] = opt.quantize(module, kind, stats[name], where=name)
        rows.append(UnitRow(name, kind, opt_name, before, option_bytes(module, kind, opt_name), ranges))
    handle = handle if handle is not None else QuantHandle(component, reversible=False)
    if handle.component is not component:
        raise AnnaError("the handle given to apply belongs to another component")
    for name, state in states.items():
        handle.load_unit(name, assignment[name], state)
    summary = ApplySummary(rows)
    if echo is not None:
        echo(summary.table())
    return summary
