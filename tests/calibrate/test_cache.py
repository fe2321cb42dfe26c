"""The input cache: which calls are kept, the byte limit, and nested arguments through safetensors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from anna.calibrate.cache import InputCache, plan_samples, thin
from anna.calibrate.tree import flatten, unflatten
from anna.errors import AnnaError


@pytest.mark.parametrize(("prompts", "steps", "k"), [(4, 20, 8), (3, 3, 8), (100, 20, 8), (2, 4, 100), (1, 1, 1)])
def test_plan_is_bounded_unique_and_spread(prompts, steps, k):
    plan = plan_samples(prompts, steps, k)
    n = min(k, prompts * steps)
    assert len(plan) == len(set(plan)) == n and plan == sorted(plan)
    assert all(0 <= i < prompts and 0 <= s < steps for i, s in plan)
    per_step, per_prompt = Counter(s for _, s in plan), Counter(i for i, _ in plan)
    if n >= steps:  # every step is represented, evenly
        assert len(per_step) == steps and max(per_step.values()) - min(per_step.values()) <= 1
    else:  # steps spread over the schedule
        assert len(per_step) == n and max(per_step) >= steps * (n - 1) // n
    assert len(per_prompt) == min(prompts, n)


def test_plan_cache_steps():
    plan = plan_samples(4, 20, 8, cache_steps=[0, 10, 19])
    assert {s for _, s in plan} == {0, 10, 19}
    with pytest.raises(AnnaError, match="out of range"):
        plan_samples(4, 20, 8, cache_steps=[20])
    with pytest.raises(AnnaError, match="at least 1"):
        plan_samples(4, 20, 0)


def test_thin_keeps_first_and_spreads():
    plan = [(i, 0) for i in range(10)]
    assert thin(plan, 3) == [(0, 0), (3, 0), (6, 0)]
    assert thin(plan, 20) == plan


def test_cache_byte_limit_thins_the_plan():
    sample = (torch.zeros(10),)  # 40 bytes
    cache = InputCache(plan_samples(1, 10, 10), limit_bytes=100)
    for call in range(10):
        if cache.wants(0, call):
            cache.add(0, call, sample)
    assert len(cache.samples) == 2 and cache.nbytes == 80 and [s["call"] for s in cache.samples] == [0, 5]
    with pytest.raises(AnnaError, match="too small for one cached input"):
        InputCache([(0, 0)], limit_bytes=39).add(0, 0, sample)


def test_tree_round_trip():
    value = (
        [torch.randn(2, 3), torch.tensor(5)],
        {"a": None, "b": True, "c": 1.5, "d": "s", "e": {"x": torch.ones(1, dtype=torch.float16)}, "f": (1, 2)},
    )
    skeleton, tensors = flatten(value, "s0")
    assert set(tensors) == {"s0.0.0", "s0.0.1", "s0.1.e.x"}
    back = unflatten(skeleton, tensors)
    assert isinstance(back, tuple) and isinstance(back[0], list) and back[1]["f"] == (1, 2)
    assert torch.equal(back[0][0], value[0][0]) and back[1]["e"]["x"].dtype == torch.float16
    assert {k: v for k, v in back[1].items() if k not in ("e",)} == {k: v for k, v in value[1].items() if k != "e"}
    with pytest.raises(AnnaError, match="cannot store"):
        flatten({"m": torch.nn.Linear(1, 1)}, "s0")
