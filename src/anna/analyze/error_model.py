"""The error model: per (unit, option) output deltas and the quadratic form that predicts a plan's output MSE.

With `d[i,j]` the change of the component's output (over all cached samples, D elements) when only unit i uses option
j, a plan's error is modelled as the sum of its deltas, so its MSE is `t^T G t` with `G[(i,j),(k,l)] =
<d[i,j], d[k,l]> / D`. The diagonal (each unit's own MSE) is kept exactly; the cross terms come from CountSketches of
the deltas, so memory is `units x options x k` floats whatever D is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from anna.analyze import fisher
from anna.analyze.sketch import CountSketch, ExactProjection
from anna.errors import AnnaError

DEFAULT_SKETCH = 1024
# Exact deltas (no sketch) when units x options x output elements x 4 bytes fit in this: tiny models, MiniLM.
EXACT_LIMIT_BYTES = 256 * 2**20

# quantize({unit: option}) -> a context manager under which the component runs with those units quantized.
Quantizer = Callable[[dict[str, str]], AbstractContextManager[Any]]
# run(sample) -> the component's output tensor for one cached input sample.
Runner = Callable[[Any], torch.Tensor]


@dataclass
class ErrorModel:
    """Exact per-unit MSEs `diag[i, j]` and delta sketches `sketches[i, j]`, for units x options (option 0: fp16)."""

    units: list[str]
    options: list[str]
    diag: np.ndarray  # (n, m) float64: ||d[i,j]||^2 / D
    sketches: np.ndarray  # (n, m, k) float32
    n_elements: int  # D
    fisher: np.ndarray | None = None  # (n, m) float64, sum(grad_out^2 * delta_out^2) per unit and option
    # Correction fitted on measured plans: MSE ~ diag_scale * sum(own MSEs) + cross_scale * sum(cross terms).
    diag_scale: float = 1.0
    cross_scale: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.units), len(self.options)

    def gram(self) -> np.ndarray:
        """G over flat index i*m+j: sketch inner products off the diagonal, exact MSEs on it."""
        n, m = self.shape
        s = self.sketches.reshape(n * m, -1).astype(np.float64)
        g = s @ s.T * (self.cross_scale / self.n_elements)
        g[np.diag_indices_from(g)] = self.diag.reshape(-1) * self.diag_scale
        bad = ~np.isfinite(self.diag.reshape(-1))
        g[bad, :] = 0.0  # such options are masked out of the search (see anna.search)
        g[:, bad] = 0.0
        return g

    def parts(self, choice: Sequence[int]) -> tuple[float, float]:
        """(sum of the units' own MSEs, sum of the cross terms) of a plan, uncorrected."""
        choice = np.asarray(choice)
        rows = np.arange(len(self.units))
        own = self.diag[rows, choice]
        if not np.all(np.isfinite(own)):
            return float("inf"), 0.0
        s = self.sketches[rows, choice].astype(np.float64)
        total = s.sum(0)
        return float(own.sum()), float((total @ total - np.einsum("ij,ij->", s, s)) / self.n_elements)

    def predict(self, choice: Sequence[int]) -> float:
        """Predicted MSE of a plan given as one option index per unit (with the fitted correction)."""
        own, cross = self.parts(choice)
        return own * self.diag_scale + cross * self.cross_scale

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {"diag": torch.from_numpy(self.diag), "sketches": torch.from_numpy(self.sketches)}
        if self.fisher is not None:
            out["fisher"] = torch.from_numpy(self.fisher)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], units: list[str], options: list[str], n_elements: int):
        fisher = tensors.get("fisher")
        return cls(
            units=units,
            options=options,
            diag=tensors["diag"].numpy().astype(np.float64),
            sketches=tensors["sketches"].numpy().astype(np.float32),
            n_elements=n_elements,
            fisher=None if fisher is None else fisher.numpy().astype(np.float64),
        )


@torch.inference_mode()
def reference_outputs(run: Runner, samples: Sequence[Any]) -> list[torch.Tensor]:
    """The unquantized component's output on every cached input; a non-finite one is an error naming the input
    (every unit and option would otherwise measure as infinitely bad)."""
    refs = [run(s).float() for s in samples]
    for k, ref in enumerate(refs):
        bad = int((~torch.isfinite(ref)).sum())
        if bad:
            raise AnnaError(
                f"the unquantized component's output on cached calibration input {k} holds {bad:,} non-finite values "
                f"(of {ref.numel():,}): the model itself overflows there, not a quantized unit; check the model's "
                "weights (calibrate warns about non-finite ones) or calibrate with other prompts or settings"
            )
    return refs


@torch.inference_mode()
def measure_delta(
    run: Runner,
    samples: Sequence[Any],
    refs: Sequence[torch.Tensor],
    sketch: CountSketch | ExactProjection | None = None,
) -> tuple[float, np.ndarray | None, float]:
    """Run every sample under the active quantization: (sum of squared deltas, sketch of the delta, elements)."""
    sq, elements = 0.0, 0
    acc = torch.zeros(sketch.k) if sketch is not None else None
    for b, (sample, ref) in enumerate(zip(samples, refs, strict=True)):
        d = run(sample).float() - ref
        sq += float(d.double().pow(2).sum())
        elements += d.numel()
        if acc is not None:
            acc += sketch(d, b).cpu()
    return sq, (acc.numpy() if acc is not None else None), elements


def build_error_model(
    run: Runner,
    samples: Sequence[Any],
    units: Sequence[str],
    options: Sequence[str],
    quantize: Quantizer,
    *,
    sketch_k: int | None = None,  # None: exact when it fits EXACT_LIMIT_BYTES, else DEFAULT_SKETCH; 0: exact
    seed: int = 0,
    progress: bool = True,
    state: ErrorModel | None = None,
    done: int = 0,
    on_unit: Callable[[ErrorModel, int], None] | None = None,
    component: nn.Module | None = None,
    fisher_samples: int = 0,
    grad_run: Runner | None = None,
    same_as: dict[tuple[int, int], int] | None = None,
) -> ErrorModel:
    """One component run per (unit, option, sample) plus the reference run. `state`/`done` resume a partial model;
    `on_unit(model, units_done)` is called after each unit (to checkpoint). With `component` and `fisher_samples`,
    the Fisher score of every unit-option is measured on the first samples in the same runs (one extra
    forward+backward per probed sample, through `grad_run` when `run` records no autograd graph). `same_as[(i, j)]
    = j0 < j` says that option j quantizes unit i exactly as option j0 does: its trial is copied, not run."""
    if options[0] != "fp16":
        raise ValueError("options[0] must be fp16")
    refs = reference_outputs(run, samples)
    n_elements = sum(r.numel() for r in refs)
    n, m = len(units), len(options)
    if sketch_k is None:
        sketch_k = 0 if n * m * n_elements * 4 <= EXACT_LIMIT_BYTES else DEFAULT_SKETCH
    sketch = CountSketch(sketch_k, seed) if sketch_k > 0 else ExactProjection([r.numel() for r in refs])
    em = state or ErrorModel(
        units=list(units),
        options=list(options),
        diag=np.zeros((n, m)),
        sketches=np.zeros((n, m, sketch.k), dtype=np.float32),
        n_elements=n_elements,
    )
    probe = None
    if component is not None and fisher_samples > 0:
        probe = fisher.probe(component, grad_run or run, samples[:fisher_samples], units, seed)
        if em.fisher is None:
            em.fisher = np.zeros((n, m))
    bar = tqdm(total=n * (m - 1), initial=done * (m - 1), desc="analyze", unit="unit-option", disable=not progress)
    for i in range(done, n):
        for j in range(1, m):
            j0 = (same_as or {}).get((i, j))
            if j0 is not None:
                em.diag[i, j], em.sketches[i, j] = em.diag[i, j0], em.sketches[i, j0]
                if probe is not None:
                    em.fisher[i, j] = em.fisher[i, j0]
                bar.update(1)
                continue
            with (
                quantize({units[i]: options[j]}),
                fisher.capture_outputs(
                    component or nn.Module(), [units[i]] if probe else [], limit=fisher_samples
                ) as outs,
            ):
                sq, sk, _ = measure_delta(run, samples, refs, sketch)
            if probe is not None:
                em.fisher[i, j] = probe.score(units[i], outs[units[i]])
            finite = np.isfinite(sq) and np.all(np.isfinite(sk))
            em.diag[i, j] = sq / n_elements if finite else np.inf
            em.sketches[i, j] = sk if finite else 0.0
            bar.update(1)
        if on_unit is not None:
            on_unit(em, i + 1)
    bar.close()
    return em


def measured_mse(run: Runner, samples: Sequence[Any], refs: Sequence[torch.Tensor]) -> float:
    """The real output MSE of whatever quantization is active, against the reference outputs."""
    sq, _, elements = measure_delta(run, samples, refs)
    return sq / elements
