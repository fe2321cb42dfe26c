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
from anna.units import check_unit_names


@dataclass(frozen=True)
class Plan:
    """One option per unit of a component, with the budget it was solved for, its bytes and predicted error."""

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

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], source: str = "plan") -> Plan:
        """A full plan object (as `to_json` writes it) with its types checked; no inventory needed."""
        units = obj.get("units")
        if not isinstance(units, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in units.items()):
            raise AnnaError(f"{source}: 'units' must map unit names to option names")
        missing = [k for k in ("model", "component", "bytes", "size_ratio") if obj.get(k) is None]
        if missing:
            raise AnnaError(f"{source} lacks {', '.join(missing)} (a short-form plan needs the model: load_plan)")
        try:
            return cls(
                model=str(obj["model"]),
                component=str(obj["component"]),
                units=dict(units),
                bag=[str(o) for o in obj.get("bag") or sorted(set(units.values()))],
                bytes=int(obj["bytes"]),
                size_ratio=float(obj["size_ratio"]),
                budget=None if obj.get("budget") is None else float(obj["budget"]),
                predicted_mse=None if obj.get("predicted_mse") is None else float(obj["predicted_mse"]),
                extra={k: v for k, v in obj.items() if k not in _FIELDS},
            )
        except (TypeError, ValueError) as e:
            raise AnnaError(f"{source}: {e}") from None

    @classmethod
    def read(cls, path: str | Path, what: str = "plan") -> Plan:
        """A plan file (a run's `plans/*.json` or a checkpoint's `plan.json`), its types checked."""
        return cls.from_json(read_json(path, what), source=f"{what} {path}")

    def check(self, inventory: Inventory) -> Plan:
        """This plan fits ``inventory``: same model and component, only units it has, registered options."""
        if self.model != inventory.model or self.component != inventory.component:
            raise AnnaError(f"plan is for {self.model}/{self.component}, not {inventory.model}/{inventory.component}")
        check_unit_names(self.units, inventory.names, f"{inventory.model}/{inventory.component}")
        for opt in set(self.units.values()):
            get_option(opt)
        return self


_FIELDS = ("format_version", "model", "component", "bag", "budget", "size_ratio", "bytes", "predicted_mse", "units",
           "default")


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
    check_unit_names(assignment, inventory.names, f"{inventory.model}/{inventory.component}")
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


MAX_DEPTH = 16  # nesting of a plan's extra fields (search writes flat ones)


def _depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply ``value`` nests lists and objects (stops counting past ``limit``)."""
    if limit < 0 or not isinstance(value, dict | list):
        return 0
    items = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(v, limit - 1) for v in items), default=0)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_plan_shape(obj: Any, source: str = "plan") -> None:
    """The one check of a plan object's shape, before any name is looked up: every field of the right type, option
    names that are strings, and no empty plan (write ``{"default": "fp16"}`` to keep every unit in FP16)."""
    if not isinstance(obj, Mapping):
        raise AnnaError(f"{source} must be a JSON object, not {type(obj).__name__}")
    if not obj.get("units") and "default" not in obj:
        raise AnnaError(f"{source} is empty: it names no units and no default option; write "
                        '{"default": "fp16"} to keep every unit in FP16, or {"default": "fp8-moderate"} for one option')
    for key in ("model", "component", "default", "model_spec"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise AnnaError(f"{source}: '{key}' must be a string, not {type(obj[key]).__name__}")
    units = obj.get("units", {})
    if not isinstance(units, Mapping):
        raise AnnaError(f"{source}: 'units' must map unit names to option names, not be a {type(units).__name__}")
    bad = next(((n, o) for n, o in units.items() if not isinstance(o, str)), None)
    if bad is not None:
        raise AnnaError(f"{source}: unit '{bad[0]}' must name one option (a string such as \"fp8-moderate\"), not a "
                        f"{type(bad[1]).__name__}")
    bag = obj.get("bag")
    if bag is not None and (not isinstance(bag, list) or not all(isinstance(b, str) for b in bag)):
        raise AnnaError(f"{source}: 'bag' must be a list of option names, such as [\"fp16\", \"fp8-moderate\"]")
    for key in ("budget", "size_ratio", "predicted_mse", "bytes"):
        if obj.get(key) is not None and not _is_number(obj[key]):
            raise AnnaError(f"{source}: '{key}' must be a number or null, not {obj[key]!r:.40}")
    if obj.get("budget") is not None and not 0 < obj["budget"] <= 1.5:
        raise AnnaError(f"{source}: 'budget' {obj['budget']} is out of range (0, 1.5]")
    if _depth(obj) > MAX_DEPTH:
        raise AnnaError(f"{source} nests lists and objects more than {MAX_DEPTH} levels deep: it is not a plan")


def plan_from_json(obj: Mapping[str, Any], inventory: Inventory, source: str = "plan") -> Plan:
    """Validate a plan object (full or short form) against the inventory it will be applied to."""
    check_plan_shape(obj, source)
    model = obj.get("model")
    if model is not None and model != inventory.model:
        raise AnnaError(f"{source} is for model '{model}', not '{inventory.model}'")
    component = obj.get("component")
    if component is not None and component != inventory.component:
        raise AnnaError(f"{source} is for component '{component}', not '{inventory.component}'")
    units = obj.get("units", {})
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
