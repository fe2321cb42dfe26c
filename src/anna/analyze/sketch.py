"""A bounded-memory sketch of output deltas: a CountSketch (sparse Johnson-Lindenstrauss projection).

Each output element `a` goes to one of `k` buckets `h(a)` with a random sign `s(a)`; the sketch of a vector x is
`y[h(a)] += s(a) x[a]`. Inner products are unbiased, `E<y1, y2> = <x1, x2>`, with variance at most
`(|x1|^2 |x2|^2 + <x1,x2>^2) / k`. It costs O(D) per delta and stores only k floats, so thousands of unit-option
deltas fit where the full vectors (output elements x samples) would not. The hash is drawn per sample from a fixed
seed, so the same element always lands in the same bucket.
"""

from __future__ import annotations

import torch
from torch import Tensor


class CountSketch:
    """Sketch flattened per-sample tensors into `k` buckets; `seed` fixes the hash of every sample index."""

    def __init__(self, k: int, seed: int = 0) -> None:
        if k < 1:
            raise ValueError("sketch size k must be >= 1")
        self.k = k
        self.seed = seed
        self._hashes: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}

    def _hash(self, sample: int, dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (sample, dim, str(device))
        if key not in self._hashes:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + sample)
            idx = torch.randint(0, self.k, (dim,), generator=g)
            sign = torch.randint(0, 2, (dim,), generator=g).float().mul_(2).sub_(1)
            self._hashes[key] = (idx.to(device), sign.to(device))
        return self._hashes[key]

    def __call__(self, x: Tensor, sample: int) -> Tensor:
        """The sketch (k,) of one sample's flattened tensor, in float32."""
        flat = x.reshape(-1).float()
        idx, sign = self._hash(sample, flat.numel(), flat.device)
        return torch.zeros(self.k, device=flat.device).index_add_(0, idx, flat * sign)


class ExactProjection:
    """No compression: sample b's delta lands at its own offset, so inner products are exact. For small outputs,
    and to measure the sketch's error."""

    def __init__(self, sample_sizes: list[int]) -> None:
        self.offsets = [0]
        for n in sample_sizes:
            self.offsets.append(self.offsets[-1] + n)
        self.k = self.offsets[-1]

    def __call__(self, x: Tensor, sample: int) -> Tensor:
        out = torch.zeros(self.k, device=x.device)
        out[self.offsets[sample] : self.offsets[sample + 1]] = x.reshape(-1).float()
        return out
