"""Shared outputs of quantized wrappers across analysis trials.

The options of an attention unit that differ only in which projections stay FP16 quantize the other projections
identically: a trial of `fp8-absmax-fp16math-fp16k` computes the same FP8 query projection, on the same recorded input,
as the trial of `fp8-absmax-fp16math` before it. An `OutputMemo` lets a wrapper return the output it computed in an
earlier trial: the key is the wrapper's stored tensors (a digest of their bytes, dtypes and shapes: the output is a pure
function of them and the input) and the input (the tensor object itself, kept alive by the memo so that its id is
never reused, or an equal tensor). A memo lives for one unit's trials on one group of samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import Tensor, nn


def tensors_digest(tensors: Iterable[tuple[str, Tensor]], *extra: object) -> str:
    """A digest of named tensors (names, dtypes, shapes and bytes) and of `extra` settings."""
    h = hashlib.blake2b(repr(extra).encode(), digest_size=16)
    for name, t in tensors:
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


class OutputMemo:
    """Outputs by (wrapper digest, input); stores until `max_bytes` of inputs and outputs are held, then only looks
    up. An input matches when it is the stored tensor itself, or equal to it in shape, dtype and every value (a unit
    may rebuild its projections' input in each run: the reshaped, normed hidden states of a VAE attention)."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self.held = 0
        self._store: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}  # (digest, id of x) -> (x, output)
        self._by_value: dict[tuple, tuple[Tensor, Tensor]] = {}  # (digest, shape, dtype, sum of x) -> (x, output)

    @staticmethod
    def _value_key(digest: str, x: Tensor) -> tuple:
        return digest, tuple(x.shape), x.dtype, x.device, float(x.sum())

    def get(self, digest: str, x: Tensor) -> Tensor | None:
        got = self._store.get((digest, id(x)))
        if got is None or got[0] is not x:
            got = self._by_value.get(self._value_key(digest, x))
            if got is None or not torch.equal(got[0], x):
                return None
        return got[1]

    def put(self, digest: str, x: Tensor, out: Tensor) -> None:
        size = out.numel() * out.element_size() + x.numel() * x.element_size()  # x may be a fresh tensor: held here
        if self.held + size <= self.max_bytes:
            self._store[(digest, id(x))] = (x, out)
            self._by_value[self._value_key(digest, x)] = (x, out)
            self.held += size


class SharedLinear(nn.Linear):
    """Stands in for a plain ``Linear`` of a trial unit (a projection kept in FP16): the same parameters, with its
    outputs looked up in, and recorded to, a memo."""

    memo: OutputMemo
    digest: str

    @classmethod
    def of(cls, linear: nn.Linear, memo: OutputMemo) -> SharedLinear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias
        new.memo, new.digest = memo, tensors_digest(linear.named_parameters(), "linear")
        return new

    def forward(self, x: Tensor) -> Tensor:
        out = self.memo.get(self.digest, x)
        if out is None:
            out = super().forward(x)
            self.memo.put(self.digest, x, out)
        return out
