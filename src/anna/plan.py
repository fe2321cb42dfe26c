"""The plan: one option per unit, plus its budget, size and predicted error. Written by search, read by the rest.

A plan file may be written by hand in a short form, `{"default": "fp8-moderate", "units": {"conv_in": "fp16"}}`;
`load_plan` fills in the rest from the inventory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anna.artifacts import read_json, write_json
from anna.errors import AnnaError
from anna.inventory import Inventory
from anna.options.registry import FP16, get_option


@dataclass
class Plan:
    model: str
    component: str
    units: dict[str, str]
    bag: list[str]
    bytes: int
    size_ratio: float
    budget: float | None = None
    predicted_mse: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fp16_units(self) -> list[str]:
        return [n for n, o in self.units.items() if o == FP16]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "component": self.component,
            "bag": self.bag,
            "budget": self.budget,
            "size_ratio": self.size_ratio,
            "bytes": self.bytes,
            "predicted_mse": self.predicted_mse,
            **self.extra,
            "units": self.units,
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_json())


def make_plan(
    inventory: Inventory,
    assignment: Mapping[str, str],
    *,
    default: str = FP16,
    bag: list[str] | None = None,
    budget: float | None = None,
    predicted_mse: float | None = None,
    **extra: Any,
) -> Plan:
    """A full plan from a (partial) assignment; units not named get `default`. Validates names and options."""
    get_option(default)
    unknown = [n for n in assignment if n not in set(inventory.names)]
    if unknown:
        raise AnnaError(
            f"plan names {len(unknown)} unit(s) that {inventory.model}/{inventory.component} does not have, "
            f"e.g. '{unknown[0]}': is it a plan for another model?"
        )
    units = {u.name: assignment.get(u.name, default) for u in inventory.units}
    for opt in set(units.values()):
        get_option(opt)
    used = sorted(set(units.values()) - {FP16})
    nbytes = inventory.plan_bytes(units)
    return Plan(
        model=inventory.model,
        component=inventory.component,
        units=units,
        bag=bag or [FP16, *used],
        bytes=nbytes,
        size_ratio=nbytes / inventory.total_bytes_fp16,
        budget=budget,
        predicted_mse=predicted_mse,
        extra=dict(extra),
    )


def plan_from_json(obj: Mapping[str, Any], inventory: Inventory, source: str = "plan") -> Plan:
    """Validate a plan object (full or short form) against the inventory it will be applied to."""
    model = obj.get("model")
    if model is not None and model != inventory.model:
        raise AnnaError(f"{source} is for model '{model}', not '{inventory.model}'")
    component = obj.get("component")
    if component is not None and component != inventory.component:
        raise AnnaError(f"{source} is for component '{component}', not '{inventory.component}'")
    units = obj.get("units", {})
    if not isinstance(units, dict):
        raise AnnaError(f"{source}: 'units' must map unit names to option names")
    known = {"format_version", "model", "component", "bag", "budget", "size_ratio", "bytes", "predicted_mse",
             "units", "default"}
    extra = {k: v for k, v in obj.items() if k not in known}
    return make_plan(
        inventory,
        units,
        default=obj.get("default", FP16),
        bag=obj.get("bag"),
        budget=obj.get("budget"),
        predicted_mse=obj.get("predicted_mse"),
        **extra,
    )


def load_plan(path: str | Path, inventory: Inventory) -> Plan:
    return plan_from_json(read_json(path, "plan"), inventory, source=f"plan {path}")
