"""The linearised error model: every unit-option's effect on the output from a few backward passes, not one
component run per (unit, option).

Per cached sample, one forward records every unit's inputs and output, and K backward passes of `<r_k, f(x)>`
(r_k Gaussian, one per output element) give every unit's output gradient `g_ik = J_i^T r_k` at once. Each
unit-option's local delta `d_ij` (the quantized unit minus the FP unit, run on the unit's recorded inputs only)
projects to `s_ijk = <g_ik, d_ij>`, one number per probe and batch row. Since `E_r[(sum_i s_ik)^2] = ||J d||^2`,
a plan's output MSE is predicted as `mean_k sum_rows (sum_i s_{i,plan(i),k})^2 / D`: the same quadratic form as the
exact model, own and cross terms alike, with `s / sqrt(K)` as the sketch of each delta. The cost is K backward passes
plus one local run per unit-option, that is about (1 + 2K + options) component passes per sample, whatever the number
of units; the exact model needs units x options passes. It is ModelOpt's gradient score, generalised from the
diagonal to the whole quadratic form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from anna.analyze.batching import batch_size
from anna.analyze.error_model import ErrorModel, Runner
from anna.analyze.fisher import _first_tensor
from anna.options.memo import OutputMemo

PRUNE_PROJECTIONS = 128  # projections seen before dominated options are dropped
# Probes x batch rows over all samples, at least: few rows get more probes. On tiny-sdxl's UNet (8 rows) the spread
# (IQR) of linear over exact own terms is 0.22 at 256, 0.125 at 1024; 512 keeps SDXL (16 rows: 32 probes) at 1/27
# of the exact model's passes, and MiniLM (200 rows) at its 4 probes.
MIN_PROJECTIONS = 512
GROUP_BYTES = 2 << 30  # records held at once (MiniLM: 236 MB per sample of 32 rows): samples share quantized units
MEMO_BYTES = 1 << 30  # projection outputs shared between one unit's options
DEFAULT_PROBES = 4  # own-term spread 4.6% on MiniLM (8: 3.9%, 2: 8.6%), at half the backward cost of 8


@dataclass
class _Calls:
    """What one unit saw in one forward: its (args, kwargs) and output tensor, per call."""

    inputs: list[tuple[tuple, dict]] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)


def _detach(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach()
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_detach(v) for v in obj)
    return obj


@contextmanager
def record_units(component: nn.Module, units: Sequence[str]) -> Iterator[dict[str, _Calls]]:
    """Record every call of the named units: detached inputs, and the output tensor (kept in the autograd graph)."""
    seen = {u: _Calls() for u in units}
    handles = []
    for u in units:
        module = component.get_submodule(u)

        def pre(_m: nn.Module, args: tuple, kwargs: dict, u: str = u) -> None:
            seen[u].inputs.append((_detach(args), _detach(kwargs)))

        def post(_m: nn.Module, _a: Any, _k: Any, out: Any, u: str = u) -> None:
            seen[u].outputs.append(_first_tensor(out))

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def dominated(own: np.ndarray, sizes: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """(n, m) mask: option j of unit i has over `margin` times the own error of another option of i that is not
    larger (ties in both keep the lower index). FP16 (error 0) is never dominated by a smaller option."""
    n, m = own.shape
    out = np.zeros((n, m), dtype=bool)
    for i in range(n):
        for j in range(m):
            for q in range(m):
                if q == j or sizes[i, q] > sizes[i, j] or not np.isfinite(own[i, q]):
                    continue
                worse = own[i, j] > margin * own[i, q] if margin > 1.0 else own[i, j] > own[i, q]
                tie = own[i, j] == own[i, q] and (sizes[i, q] < sizes[i, j] or q < j)
                if worse or (margin == 1.0 and tie):
                    out[i, j] = True
                    break
    return out


def _probe_gradients(y: Tensor, tensors: list[Tensor], probes: int, gen: torch.Generator) -> list[list[Tensor]]:
    """For each tensor t (in y's graph), the gradients of <r_k, y> for `probes` Gaussian r_k: a list of `probes`
    tensors shaped like t. One backward per probe: on MiniLM faster than one batched (vmapped) backward, and a
    conv's backward has an op without a batching rule."""
    r = torch.randn((probes, *y.shape), generator=gen).to(y.device, y.dtype)
    need = [t for t in tensors if t.requires_grad]
    per = [torch.autograd.grad(y, need, grad_outputs=r[k], retain_graph=k + 1 < probes, allow_unused=True)
           for k in range(probes)]
    it = iter(range(len(need)))
    out = []
    for t in tensors:
        c = next(it) if t.requires_grad else None
        if c is None or per[0][c] is None:  # not in the graph: no effect on the output
            out.append([torch.zeros(t.shape, device=t.device)] * probes)
        else:
            out.append([p[c].detach().float() for p in per])
    return out


def _mean_square(gs: list[Tensor]) -> Tensor:
    """The mean over probes of the squared gradients, accumulated in place."""
    acc = gs[0].square()
    for g in gs[1:]:
        acc.addcmul_(g, g)
    return acc.div_(len(gs))


def _per_row(t: Tensor, rows: int) -> Tensor:
    """(rows, rest) when the tensor's first dimension is the batch, else one row holding the whole tensor."""
    return t.reshape(rows, -1) if t.dim() > 0 and t.shape[0] == rows else t.reshape(1, -1)


@dataclass
class _Recorded:
    """One cached sample after its forward and probe backwards: per unit, its calls' inputs, detached outputs, and
    output gradients (per call, one (rows, elements) tensor per probe) with their mean square over probes."""

    rows: int
    probes: int
    inputs: dict[str, list[tuple[tuple, dict]]]
    refs: dict[str, list[Tensor]]
    grads: dict[str, list[list[Tensor]]]
    grads_sq: dict[str, list[Tensor]]

    def nbytes(self) -> int:
        tensors = [t for d in (self.refs, self.grads_sq) for ts in d.values() for t in ts]
        tensors += [g for calls in self.grads.values() for gs in calls for g in gs]
        tensors += [t for calls in self.inputs.values() for a, k in calls for t in (*a, *k.values())
                    if isinstance(t, Tensor)]  # counts inputs shared by several units once each: an upper bound
        return sum(t.numel() * t.element_size() for t in tensors)


def _record(grad_run: Runner, sample: Any, units: Sequence[str], component: nn.Module, probes: int,
            gen: torch.Generator) -> tuple[_Recorded, int]:
    """Forward one sample recording every unit, then the probe backwards; returns the record and the output's size."""
    with torch.enable_grad(), record_units(component, units) as seen:
        y = grad_run(sample)
        rows = y.shape[0] if y.dim() > 0 else 1
        outs = [(u, t) for u in units for t in seen[u].outputs]
        if not all(t.dim() > 0 and t.shape[0] == rows for _, t in outs):
            rows = 1  # some unit mixes batch rows: project whole samples
        grads = iter(_probe_gradients(y, [t for _, t in outs], probes, gen))
    rec = _Recorded(rows, probes, {}, {}, {}, {})
    for u in units:
        rec.inputs[u] = seen[u].inputs
        rec.refs[u] = [t.detach().float() for t in seen[u].outputs]
        rec.grads[u] = [[g.reshape(rows, -1) for g in next(grads)] for _ in seen[u].outputs]
        rec.grads_sq[u] = [_mean_square(gs) for gs in rec.grads[u]]
    return rec, y.numel()


def _project(module: nn.Module, unit: str, rec: _Recorded, on_pass: Callable[[str], None] | None
             ) -> tuple[np.ndarray, float, float]:
    """Run the quantized unit on one sample's recorded inputs: (projections (probes * rows,), Fisher sum, sum of
    squared deltas)."""
    s = torch.zeros(rec.probes, rec.rows, dtype=torch.float64)
    f_sum, sq = 0.0, 0.0
    for (args, kwargs), ref, gs, g2 in zip(rec.inputs[unit], rec.refs[unit], rec.grads[unit], rec.grads_sq[unit],
                                           strict=True):
        d = _per_row(_first_tensor(module(*args, **kwargs)).float() - ref, rec.rows)
        if on_pass:
            on_pass("local")
        s += torch.stack([torch.einsum("re,re->r", g, d) for g in gs]).double()
        f_sum += float((g2 * d.pow(2)).sum())
        sq += float(d.pow(2).sum())
    return s.reshape(-1).numpy() / np.sqrt(rec.probes), f_sum, sq


def build_linear_model(
    grad_run: Runner,
    samples: Sequence[Any],
    units: Sequence[str],
    options: Sequence[str],
    quantizer: Any,
    component: nn.Module,
    *,
    probes: int = DEFAULT_PROBES,
    seed: int = 0,
    progress: bool = True,
    on_pass: Callable[[str], None] | None = None,
    sizes: np.ndarray | None = None,
    prune_margin: float = 4.0,
    min_projections: int = MIN_PROJECTIONS,
    group_bytes: int = GROUP_BYTES,
    same_as: dict[tuple[int, int], int] | None = None,
    memo_bytes: int = MEMO_BYTES,
) -> ErrorModel:
    """The linearised model of `units` x `options` (options[0] is fp16) over the cached `samples`. `quantizer`
    is a UnitQuantizer (`unit_quantized(unit, option)` yields the quantized unit). `on_pass(kind)` is
    called per component pass ("forward", "backward") and per local unit run ("local"), to count the cost.
    With `sizes` (units x options bytes), once 128 projections are in, an option whose own term is over
    `prune_margin` times that of an option of the same unit that is no larger is dropped there: it is never run
    again, and its error is infinite (the search never picks it). The probes are raised so that probes x batch rows
    over all samples is at least `min_projections`: the noise of the estimate falls with that number.

    Samples are recorded in groups of up to `group_bytes` (recorded outputs and gradients); each unit-option is
    quantized once per group and run on every sample of it, so a small model quantizes each unit-option once.

    `same_as[(i, j)] = j0` says option j quantizes unit i exactly as option j0 does: its projections are copied.
    A unit's options share the outputs of identically quantized projections (`anna.options.memo`), up to
    `memo_bytes` of them per unit and group."""
    if options[0] != "fp16":
        raise ValueError("options[0] must be fp16")
    n, m = len(units), len(options)
    gen = torch.Generator().manual_seed(seed)
    blocks: list[np.ndarray] = []  # per sample: (n, m, probes * rows)
    fisher = np.zeros((n, m))
    n_elements = 0
    alive = np.ones((n, m), dtype=bool)
    total_rows = sum(batch_size(s) or 1 for s in samples)
    k_here = max(probes, -(-min_projections // total_rows))
    prune_cols = PRUNE_PROJECTIONS if sizes is not None else None  # projections before pruning, then None
    bar = tqdm(total=len(samples) * n, desc="analyze (linear)", unit="unit", disable=not progress)
    same_as = same_as or {}

    def store(b: np.ndarray, i: int, j: int, scored: tuple[np.ndarray, float, float]) -> None:
        vec, f_sum, sq = scored
        finite = np.isfinite(sq) and np.all(np.isfinite(vec))
        b[i, j] = vec if finite else np.nan
        fisher[i, j] += f_sum if finite else 0.0

    def head_own(i: int, j: int, head: list[np.ndarray]) -> float:
        """Option j's own term on unit i over the projections before pruning (inf where not finite)."""
        value = float(sum((b[i, j] ** 2).sum() for b in blocks + head))
        return value if np.isfinite(value) else np.inf

    def run_unit(i: int, group: list[_Recorded], split: int | None, block: list[np.ndarray]) -> None:
        """Every live option of unit i on the group's samples. With `split` (pruning is due in this group), options
        run on the samples up to `split` (the head) first, smallest first, and on the rest only unless an option no
        larger beats them by `prune_margin` on the head. An option whose same-size rivals have all run goes on in
        the same quantization; one that must wait for them is quantized again if it survives."""
        memo = OutputMemo(memo_bytes)  # the unit's options share their projections' outputs on these samples
        live = [j for j in range(1, m) if alive[i, j] and (i, j) not in same_as]
        own: dict[int, float] = {}

        def beaten(j: int) -> bool:
            return any(sizes[i, k] <= sizes[i, j] and own[j] > prune_margin * v for k, v in own.items())

        @contextmanager
        def trial(j: int) -> Iterator[Callable[[range], None]]:
            """Unit i quantized with option j: yields a function that runs it on some of the group's samples."""
            with quantizer.unit_quantized(units[i], options[j], memo) as module, torch.inference_mode():

                def run(samples: range) -> None:
                    for q in samples:
                        store(block[q], i, j, _project(module, units[i], group[q], on_pass))

                yield run

        if split is None:
            for j in live:
                with trial(j) as run:
                    run(range(len(group)))
        else:
            head, rest = range(split), range(split, len(group))
            for size in sorted({sizes[i, j] for j in live}):
                same = [j for j in live if sizes[i, j] == size]
                waiting = []
                for j in same:
                    with trial(j) as run:
                        run(head)
                        own[j] = head_own(i, j, block[:split])
                        if beaten(j) or not rest:
                            continue
                        if j == same[-1]:
                            run(rest)
                        else:
                            waiting.append(j)  # a same-size rival has not run yet
                for j in waiting:
                    if not beaten(j):
                        with trial(j) as run:
                            run(rest)
        for (i0, j), j0 in same_as.items():
            if i0 == i and alive[i, j]:
                for q in range(len(group)):
                    block[q][i, j] = block[q][i, j0]
        if split is not None:  # the verdict on the head
            own_all = np.array([head_own(i, j, block[:split]) for j in range(m)])
            alive[i] &= ~dominated(own_all[None], sizes[i : i + 1], prune_margin)[0]

    def run_group(group: list[_Recorded]) -> None:
        nonlocal prune_cols
        block = [np.zeros((n, m, k_here * r.rows)) for r in group]
        cols = sum(b.shape[2] for b in blocks) + np.cumsum([b.shape[2] for b in block])
        # Pruning is due in this group when the projections reach PRUNE_PROJECTIONS (the head) by its end.
        split = int(np.argmax(cols >= prune_cols)) + 1 if prune_cols is not None and cols[-1] >= prune_cols else None
        for i in range(n):
            run_unit(i, group, split, block)
            bar.update(len(group))
        if split is not None:
            prune_cols = None
        blocks.extend(block)

    group: list[_Recorded] = []
    held = 0
    for sample in samples:
        rec, numel = _record(grad_run, sample, units, component, k_here, gen)
        n_elements += numel
        if on_pass:
            on_pass("forward")
            for _ in range(k_here):
                on_pass("backward")
        group.append(rec)
        held += rec.nbytes()
        if held >= group_bytes:
            run_group(group)
            group, held = [], 0
    if group:
        run_group(group)
    bar.close()
    for (i, j), j0 in same_as.items():
        fisher[i, j] = fisher[i, j0]
    sketches = np.concatenate(blocks, axis=2)
    bad = ~np.all(np.isfinite(sketches), axis=2) | ~alive
    sketches[bad] = 0.0
    diag_sq = (sketches**2).sum(2)
    diag = np.where(bad, np.inf, diag_sq / max(n_elements, 1))
    return ErrorModel(
        units=list(units),
        options=list(options),
        diag=diag,
        sketches=sketches.astype(np.float32),
        n_elements=n_elements,
        fisher=fisher,
    )


def count_passes(
    n_units: int, n_options: int, n_samples: int, rows: int, probes: int = DEFAULT_PROBES,
    min_projections: int = MIN_PROJECTIONS,
) -> dict[str, float]:
    """Component-pass equivalents (each over one cached sample of `rows` batch rows) of each model: the exact model
    runs the component once per (unit, option, sample) plus the reference; the linear one runs a forward, its
    probes' backwards (about two forwards each) and, per option, every unit once locally (together about one
    component forward per option), per sample, before pruning."""
    q = n_options - 1
    k = max(probes, -(-min_projections // max(rows * n_samples, 1)))
    return {
        "exact": float(n_samples * (1 + n_units * q)),
        "linear": float(n_samples * (1 + 2 * k + q)),
    }
