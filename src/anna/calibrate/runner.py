"""`calibrate`: run a model on calibration data, observe every unit of one component, cache some of its inputs,
and write the statistics into the run directory. Resumable; a finished run returns at once."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from anna.adapters.base import GenerationSettings, Model
from anna.artifacts import FORMAT_VERSION, read_json, write_json, write_tensors
from anna.calibrate import layout
from anna.calibrate.cache import MB, InputCache, plan_samples
from anna.calibrate.drivers import BatchDriver, PipelineDriver
from anna.calibrate.hooks import observe
from anna.calibrate.observers import HIST, UnitObservers
from anna.calibrate.resume import CACHE_PREFIX, load_progress, module_fingerprint, run_hash, save_progress
from anna.errors import AnnaError
from anna.inventory import match_patterns
from anna.units import nonfinite_weights, unit_modules


def select_units(
    module: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[tuple[str, str, nn.Module]]:
    """The (name, kind, module) units to observe; a pattern that matches nothing is an error."""
    found = unit_modules(module)
    names = [n for n, _, _ in found]
    keep = match_patterns(names, include, "include pattern") if include else set(names)
    if exclude:
        keep -= match_patterns(names, exclude, "exclude pattern")
    units = [u for u in found if u[0] in keep]
    if not units:
        raise AnnaError("no units left to calibrate (check --include/--exclude)")
    return units


@contextmanager
def _collect_young_only() -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects that exist already (the model: hundreds of thousands).

    Calibration's bookkeeping (staged activations, histogram state, artifacts) allocates enough long-lived objects
    to trigger full collections, each of which would scan the whole heap (0.2 s for tiny-sdxl alone). The objects
    that predate the block are frozen (`gc.freeze`) for its duration: collections still run and free any cycle
    made inside it, and everything is unfrozen on exit. Nothing is done where the caller froze objects itself.
    """
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _is_finished(run_dir: Path, run_id: str) -> bool:
    files = (layout.stats_json, layout.stats_tensors, layout.inputs_json, layout.inputs_tensors)
    if not layout.run_json(run_dir).is_file() or not all(f(run_dir).is_file() for f in files):
        return False
    try:
        return read_json(layout.run_json(run_dir)).get("calibration_hash") == run_id
    except AnnaError:
        return False


def calibrate(
    model: Model,
    run_dir: str | Path,
    *,
    component: str | None = None,
    prompts: Sequence[str] | None = None,
    settings: GenerationSettings | None = None,
    seed: int = 0,
    cache_samples: int = 8,
    progress: bool = True,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    cache_steps: Sequence[int] | None = None,
    cache_mb: float | None = None,
    checkpoint_seconds: float = 10.0,
    buffer_mb: float = 32.0,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Calibrate one component of `model` into `run_dir` and return `run_dir`.

    Pipelines run once per prompt (`seed + i`, `settings` or the model's defaults); generic models run their
    batches. `cache_samples` component inputs (at `cache_steps`, all steps by default; within `cache_mb` if given)
    are kept for later stages. Progress is checkpointed at most every `checkpoint_seconds` (0: after every
    prompt); a rerun with the same configuration resumes, a finished one returns at once. Activations smaller
    than 1 MB are staged up to `buffer_mb` in total and binned together (same statistics, less overhead).
    """
    say = log or ((lambda msg: tqdm.write(msg, file=sys.stderr)) if progress else (lambda msg: None))
    model.require_weights("calibrate")
    component = component or model.default_component
    module = model.component(component)
    units = select_units(module, include, exclude)
    for name, bad in nonfinite_weights(module):
        say(f"warning: weight {component}.{name} holds {bad:,} non-finite values (NaN/Inf); the units that use it give "
            "non-finite outputs whatever their option: check the model's weights")
    if model.pipeline is not None:
        driver: PipelineDriver | BatchDriver = PipelineDriver(model, component, prompts, settings, seed)
    else:
        driver = BatchDriver(model, component, prompts)
    if cache_mb is not None and cache_mb <= 0:
        raise AnnaError(f"cache limit must be positive, got {cache_mb} MB")
    plan = plan_samples(driver.n_items, driver.calls_per_item, cache_samples, cache_steps)
    record = {
        "model": model.name,
        "component": component,
        **driver.record(),
        "cache_samples": cache_samples,
        "cache_steps": None if cache_steps is None else sorted(set(cache_steps)),
        "cache_mb": cache_mb,
        "include": list(include),
        "exclude": list(exclude),
    }
    run_id = run_hash({**record, "module": module_fingerprint(module), "data": driver.fingerprint()})
    run_dir = Path(run_dir)
    if _is_finished(run_dir, run_id):
        say(f"calibration in {run_dir} is complete for these settings; reusing it")
        return run_dir

    if buffer_mb < 0:
        raise AnnaError(f"buffer size must be >= 0 MB, got {buffer_mb}")
    observers = UnitObservers([(n, k) for n, k, _ in units], buffer_bytes=int(buffer_mb * MB))
    cache = InputCache(plan, None if cache_mb is None else int(cache_mb * MB))
    ckpt_path = layout.progress(run_dir)
    saved, why = load_progress(ckpt_path, run_id)
    start, elapsed_before = 0, 0.0
    if saved is not None:
        try:
            observers.load_state_dict(
                {k: v for k, v in saved.tensors.items() if k.startswith(HIST + "/")}, **saved.meta["observers"]
            )
            cache_tensors = {k[len(CACHE_PREFIX) :]: v for k, v in saved.tensors.items() if k.startswith(CACHE_PREFIX)}
            cache = InputCache.from_json(saved.meta["cache"], cache_tensors)
            start, elapsed_before = saved.finished, float(saved.meta["elapsed"])
        except (AnnaError, KeyError, TypeError, ValueError) as e:  # e.g. written by another anna version
            observers.reset()
            cache = InputCache(plan, None if cache_mb is None else int(cache_mb * MB))
            saved, why = None, f"the progress checkpoint cannot be restored ({e}); starting over"
    if saved is not None:
        say(
            f"resuming calibration at {driver.tick_unit if driver.kind == 'batches' else 'prompt'} {start + 1} "
            f"of {driver.n_items}"
        )
    else:
        if why:
            say(why)
        if layout.run_json(run_dir).is_file():
            say(f"{run_dir} holds a calibration with other settings; starting over")
            layout.run_json(run_dir).unlink()

    with _collect_young_only():
        t0 = time.perf_counter()
        last_ckpt = t0

        def checkpoint(finished: int) -> None:
            tensors = observers.state_dict()
            tensors.update({CACHE_PREFIX + k: v for k, v in cache.tensors.items()})
            meta = {
                "observers": observers.bookkeeping(),
                "cache": cache.to_json(),
                "elapsed": elapsed_before + time.perf_counter() - t0,
            }
            save_progress(ckpt_path, run_id, finished, tensors, meta)

        def report_nonfinite(item: int) -> None:
            for key in observers.note_nonfinite(item):
                say(
                    f"non-finite values at {key[0]} ({key[1]}), first in item {observers.nonfinite_first[key]}; "
                    "excluded from the statistics"
                )

        bar = tqdm(
            total=driver.n_items * driver.ticks_per_item,
            initial=start * driver.ticks_per_item,
            desc=f"calibrate {component}",
            unit=driver.tick_unit,
            disable=not progress,
        )
        try:
            with observe(units, observers), driver.capturing(cache):
                for i in range(start, driver.n_items):
                    observers.item = i
                    driver.run_item(i, bar.update)
                    report_nonfinite(i)
                    if i + 1 < driver.n_items and time.perf_counter() - last_ckpt >= checkpoint_seconds:
                        checkpoint(i + 1)
                        last_ckpt = time.perf_counter()
        finally:
            bar.close()
        observers.flush()
        report_nonfinite(driver.n_items - 1)

        seconds = time.perf_counter() - t0
        summary = _write_results(run_dir, model.name, component, driver.kind, units, observers, cache)
        summary.update(seconds=seconds, total_seconds=elapsed_before + seconds, resumed_from=start)
        write_json(layout.run_json(run_dir), {**record, "calibration_hash": run_id, "summary": summary})
        ckpt_path.unlink(missing_ok=True)
        return run_dir


def _write_results(
    run_dir: Path,
    model_name: str,
    component: str,
    kind: str,
    units: list[tuple[str, str, nn.Module]],
    observers: UnitObservers,
    cache: InputCache,
) -> dict[str, Any]:
    """stats.safetensors, stats.json, inputs.safetensors, inputs.json; returns the summary for run.json."""
    hist_state = observers.state_dict()
    stats = observers.compute(hist_state)
    units_json: dict[str, Any] = {}
    unobserved = []
    for name, unit_kind, _ in units:
        acts = stats[name]
        units_json[name] = {"kind": unit_kind, **{a: (s.to_json() if s else None) for a, s in acts.items()}}
        if any(s is None for s in acts.values()):
            unobserved.append(name)
    nonfinite = [n.to_json() for n in observers.nonfinite()]
    head = {"format_version": FORMAT_VERSION, "model": model_name, "component": component}
    write_tensors(layout.stats_tensors(run_dir), hist_state, metadata={"format_version": str(FORMAT_VERSION)})
    write_json(layout.stats_json(run_dir), {**head, "units": units_json, "nonfinite": nonfinite})
    write_tensors(layout.inputs_tensors(run_dir), cache.tensors, metadata={"format_version": str(FORMAT_VERSION)})
    write_json(layout.inputs_json(run_dir), {**head, "kind": kind, **cache.to_json()})
    return {
        "units": len(units),
        "observed": len(units) - len(unobserved),
        "unobserved": unobserved,
        "nonfinite": nonfinite,
        "histogram_bytes": observers.nbytes,
        "cached_samples": len(cache.samples),
        "cached_bytes": cache.nbytes,
    }
