"""The Python front door: `anna.quantize`, `anna.save`, `anna.load`.

```python
import anna
q = anna.quantize(pipe_or_module, data, budget=0.55)   # data: prompts for a pipeline, batches for a module
anna.save(q, "ckpt/")                                   # model.safetensors + plan.json
model = anna.load("ckpt/", into=fresh_pipe_or_module)   # the stock object, quantized in place
```

`quantize` runs the stages (calibrate, analyze, search) in a run folder (a new temporary one unless `run_dir` is
given; an existing one resumes) and applies the plan to the object given, in place. With `budgets=[...]` it returns
the whole front, one `Quantized` per feasible budget (budgets below the smallest plan are skipped, with a note
through `echo`), and leaves the object as it was: `q.apply()` applies one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anna.adapters.base import GenerationSettings, Model, pipeline_components
from anna.errors import AnnaError
from anna.options.handle import QuantHandle
from anna.plan import Plan

Forward = Callable[[nn.Module, Any], torch.Tensor]
Echo = Callable[[str], Any] | None


def is_pipeline(obj: Any) -> bool:
    """A diffusers SDXL-shaped pipeline: it has a UNet and a VAE."""
    return not isinstance(obj, nn.Module) and hasattr(obj, "unet") and hasattr(obj, "vae")


def _pipeline_defaults(pipe: Any) -> GenerationSettings:
    """Sampling defaults of a pipeline object: its native resolution, 20 steps, guidance 8 (SDXL's calibration)."""
    side = int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))
    return GenerationSettings(steps=20, guidance=8.0, height=side, width=side)


def _pipeline_name(pipe: Any) -> str:
    return str(getattr(getattr(pipe, "config", None), "_name_or_path", "") or type(pipe).__name__)


def as_model(obj: Any, data: Iterable[Any] | None = None, *, forward: Forward | None = None, name: str | None = None,
             settings: GenerationSettings | None = None) -> Model:
    """anna's view of a pipeline object or an `nn.Module` (a `Model` is returned as it is)."""
    if isinstance(obj, Model):
        return obj
    if is_pipeline(obj):
        return Model(name=name or _pipeline_name(obj), components=pipeline_components(obj), pipeline=obj,
                     defaults=settings or _pipeline_defaults(obj))
    if isinstance(obj, nn.Module):
        from anna.adapters.generic import from_module

        return from_module(obj, list(data) if data is not None else [], forward, name=name)
    raise AnnaError(f"anna quantizes a diffusers pipeline or a torch nn.Module, not {type(obj).__name__}")


class _Slot:
    """What the members of one front share: the member applied to the object now, and its handle."""

    def __init__(self) -> None:
        self.current: Quantized | None = None
        self.handle: QuantHandle | None = None

    def clear(self) -> None:
        if self.current is not None:
            if self.handle is None:
                raise AnnaError("this object was quantized for good (budget=...): quantize a fresh one for another")
            self.handle.undo()
        self.current, self.handle = None, None


@dataclass
class Quantized:
    """One plan for one component of a model: what `anna.save` writes and `q.apply()` applies."""

    target: Any
    model: Model
    component: str
    plan: Plan
    run_dir: Path
    stats: dict[str, Any] = field(repr=False)
    slot: _Slot = field(default_factory=_Slot, repr=False)

    @property
    def applied(self) -> bool:
        """Whether the object is quantized as this plan says now."""
        return self.slot.current is self

    @property
    def size_ratio(self) -> float:
        return self.plan.size_ratio

    @property
    def predicted_mse(self) -> float | None:
        return self.plan.predicted_mse

    @property
    def measured_mse(self) -> float | None:
        return self.plan.extra.get("measured_mse")

    def _handle(self, *, reversible: bool) -> QuantHandle:
        """Apply the plan to the component through a new handle; every tensor outside the quantized units is set to
        its FP16 value, as the checkpoint stores it, so the model equals what loading the checkpoint gives."""
        from anna.export.checkpoint import checkpoint_rounding
        from anna.options.apply import apply

        comp = self.model.component(self.component)
        handle = QuantHandle(comp, reversible=reversible)
        apply(comp, self.plan, self.stats, echo=None, handle=handle)
        handle.set_tensors(checkpoint_rounding(comp, self.plan))
        return handle

    def apply(self, *, reversible: bool = True) -> Any:
        """Quantize the object in place as this plan says (undoing another member of the same front first);
        returns the object. With ``reversible=False`` it is for good, and the originals are released."""
        if not self.applied:
            self.slot.clear()
            handle = self._handle(reversible=reversible)
            self.slot.current, self.slot.handle = self, (handle if reversible else None)
        return self.target

    def undo(self) -> Any:
        """Put the object back as it was before `apply`; returns it."""
        if self.applied:
            self.slot.clear()
        return self.target


def quantize(
    obj: Any,
    data: Iterable[Any],
    *,
    budget: float | None = None,
    budgets: Sequence[float] | None = None,
    component: str | None = None,
    forward: Forward | None = None,
    run_dir: str | Path | None = None,
    name: str | None = None,
    settings: GenerationSettings | None = None,
    bag: Sequence[str] | None = None,
    cache_samples: int = 4,
    validate: int = 0,
    measure: bool = True,
    seed: int = 0,
    progress: bool = False,
    echo: Echo = None,
) -> Quantized | list[Quantized]:
    """Quantize one component of `obj` (a diffusers pipeline or an `nn.Module`) to a size budget.

    `data`: prompts for a pipeline, input batches for a module (run as `forward(module, batch)`, by default
    `module(batch)`, the first output taken). `budget`: the size ratio of the component against FP16; the object is
    quantized in place and the result returned. `budgets`: the whole front, one result per budget, the object left
    unchanged (apply one with `q.apply()`). `component`: for a pipeline, `unet` (default), `text_encoder`,
    `text_encoder_2` or `vae_decoder`. `name`: the model's name in the artifacts (a built-in, hub id or folder lets the
    command line continue the run). `run_dir` keeps the stages' artifacts (default: a new temporary folder).
    """
    from anna.analyze.stage import analyze
    from anna.artifacts import read_json
    from anna.calibrate import calibrate, load_stats
    from anna.inventory import build_inventory
    from anna.plan import load_plan
    from anna.search import search

    if (budget is None) == (budgets is None):
        raise AnnaError("give exactly one of budget=... or budgets=[...]")
    ratios = sorted({float(budget)} if budget is not None else {float(b) for b in budgets or ()})
    if not ratios:
        raise AnnaError("budgets=[...] is empty")
    data = list(data)
    model = as_model(obj, data, forward=forward, name=name, settings=settings)
    component = component or model.default_component
    model.component(component)
    run = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="anna-run-"))
    prompts = [str(p) for p in data] if model.pipeline is not None else None
    calibrate(model, run, component=component, prompts=prompts, seed=seed, cache_samples=cache_samples,
              progress=progress, log=echo or (lambda _s: None))
    analyze(run, model=model, bag=bag, validate=validate, seed=seed, progress=progress, echo=echo)
    front = read_json(search(run, ratios, model=model, measure=measure, baselines=False, echo=echo), "front")
    inventory = build_inventory(model, component)
    stats = load_stats(run)
    slot = _Slot()
    results = [Quantized(obj, model, component, load_plan(run / p["plan"], inventory), run, stats, slot)
               for p in front["points"]]
    if budget is not None:
        results[0].apply(reversible=False)
        return results[0]
    return results


def save(q: Quantized, out_dir: str | Path, *, echo: Echo = None) -> Path:
    """Write the checkpoint of `q` (`model.safetensors` + `plan.json`) into `out_dir`; returns `out_dir`.

    The object is left as it was: a member of a front that is not applied now is applied, saved and undone."""
    from anna.export.checkpoint import save_checkpoint

    if not isinstance(q, Quantized):
        raise AnnaError(f"anna.save takes what anna.quantize returned, not {type(q).__name__}")
    if q.applied:
        save_checkpoint(q.model, q.component, q.plan, out_dir, echo=echo)
        return Path(out_dir)
    before = q.slot.current
    q.apply()
    try:
        save_checkpoint(q.model, q.component, q.plan, out_dir, echo=echo)
    finally:
        if before is not None:
            before.apply()
        else:
            q.undo()
    return Path(out_dir)


def load(ckpt_dir: str | Path, into: Any, *, echo: Echo = None) -> Any:
    """Quantize `into` (a fresh pipeline or module of the checkpoint's architecture) in place from a checkpoint;
    returns it. The model's name need not match the checkpoint's: its structure (unit names, tensor shapes) must."""
    from anna.artifacts import read_json
    from anna.export.checkpoint import PLAN_FILE, load_checkpoint_into

    obj = read_json(Path(ckpt_dir) / PLAN_FILE, "checkpoint plan")
    model = as_model(into, name=str(obj.get("model") or "model"))
    if model.pipeline is None and obj.get("component") not in (None, "model"):
        model = Model(name=model.name, components={obj["component"]: into})
    load_checkpoint_into(model, ckpt_dir, echo=echo)
    return into
