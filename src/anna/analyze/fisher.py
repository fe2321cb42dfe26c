"""Fisher / gradient sensitivity, as NVIDIA ModelOpt's AutoQuantize scores layers: `sum(grad_out^2 * delta_out^2)`.

`grad_out` is the gradient of `<output, r>` with respect to the unit's output, for a Gaussian probe r, so that
`E[grad^2]` is the diagonal of J^T J (J: the unit output -> component output Jacobian) and the score estimates the
output MSE that the unit's own output change `delta_out` causes, without cross terms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


def _first_tensor(out: Any) -> Tensor:
    return out if isinstance(out, Tensor) else next(t for t in out if isinstance(t, Tensor))


@contextmanager
def capture_outputs(
    component: nn.Module, names: Sequence[str], limit: int | None = None
) -> Iterator[dict[str, list[Tensor]]]:
    """Record the output tensor of each named unit (its first `limit` calls); the hooks are always removed."""
    seen: dict[str, list[Tensor]] = {n: [] for n in names}

    def hook(name: str) -> Callable:
        def record(_m: nn.Module, _a: Any, out: Any) -> None:
            if limit is None or len(seen[name]) < limit:
                seen[name].append(_first_tensor(out))

        return record

    handles = [component.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@dataclass
class FisherProbe:
    """Per unit and probed sample: the squared output gradient and the reference unit output."""

    grad_sq: dict[str, list[Tensor]]
    ref_out: dict[str, list[Tensor]]

    def score(self, unit: str, outputs: Sequence[Tensor]) -> float:
        """sum(grad^2 * (out - ref)^2) over the probed samples, for the unit's outputs under some option."""
        return float(
            sum(
                (g * (o.detach().float() - r) ** 2).sum()
                for g, o, r in zip(self.grad_sq[unit], outputs, self.ref_out[unit], strict=True)
            )
        )


def probe(
    component: nn.Module, run: Callable[[Any], Tensor], samples: Sequence[Any], units: Sequence[str], seed: int = 0
) -> FisherProbe:
    """One forward and one backward per sample, over all units at once."""
    grad_sq: dict[str, list[Tensor]] = {u: [] for u in units}
    ref_out: dict[str, list[Tensor]] = {u: [] for u in units}
    gen = torch.Generator().manual_seed(seed)
    for sample in samples:
        with torch.enable_grad(), capture_outputs(component, units) as outs:
            y = run(sample)
            r = torch.randn(y.shape, generator=gen).to(y.device, y.dtype)
            tensors = [outs[u][0] for u in units]
            grads = torch.autograd.grad((y * r).sum(), tensors, allow_unused=True)
        for u, t, g in zip(units, tensors, grads, strict=True):
            ref_out[u].append(t.detach().float())
            grad_sq[u].append(torch.zeros_like(t, dtype=torch.float32) if g is None else g.detach().float() ** 2)
    return FisherProbe(grad_sq, ref_out)
