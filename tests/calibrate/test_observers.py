"""UnitObservers: staged binning, the repeat hint and the stacked state give exactly the histograms of binning every
tensor at once."""

from __future__ import annotations

import pytest
import torch

from anna.calibrate.hooks import observe
from anna.calibrate.observers import UnitObservers
from anna.errors import AnnaError


def _stream(seed: int) -> list[tuple[torch.Tensor, bool]]:
    """(tensor, repeat hint) pairs: runs of one tensor hinted as repeats, a wrong hint, NaN, shape and range changes."""
    g = torch.Generator().manual_seed(seed)
    out: list[tuple[torch.Tensor, bool]] = []
    for k in range(12):
        x = torch.randn(3, 50 + 10 * (k % 3), generator=g) * 4.0 ** (k % 5)
        if k == 7:
            x[0, 0] = float("nan")  # NaN != NaN: its repeats are binned as new tensors
        out.append((x, False))
        out += [(x.clone(), True)] * (k % 4)  # equal values, hinted
        if k == 5:
            out.append((x + 1.0, True))  # a wrong hint: other values
            out.append((x.reshape(-1)[:60].clone(), True))  # a wrong hint: other shape
    return out


def _observe(buffer_bytes: int, direct_bytes: int, seed: int) -> UnitObservers:
    obs = UnitObservers([("u", "linear")], buffer_bytes=buffer_bytes, direct_bytes=direct_bytes)
    collect = obs.collector("u", "input")
    for i, (x, repeat) in enumerate(_stream(seed)):
        obs.item = i
        collect(x, repeat)
    obs.flush()
    return obs


@pytest.mark.parametrize("buffer_bytes,direct_bytes", [(1 << 20, 1 << 20), (4096, 2048), (1 << 20, 1500)])
def test_staging_and_repeats_equal_binning_at_once(buffer_bytes: int, direct_bytes: int) -> None:
    for seed in range(3):
        ref = _observe(0, 0, seed).hists[("u", "input")].state_dict()
        staged = _observe(buffer_bytes, direct_bytes, seed)
        got = staged.hists[("u", "input")].state_dict()
        for field, t in ref.items():
            assert torch.equal(got[field], t), (seed, field)
        first_nan = next(i for i, (x, _) in enumerate(_stream(seed)) if x.isnan().any())
        assert [(n.first_item, n.count) for n in staged.nonfinite()] == [(first_nan, int(ref["nonfinite"]))]
        assert int(ref["nonfinite"]) == 4  # the NaN tensor and its three hinted copies


def test_repeats_are_counted_without_a_copy() -> None:
    obs = UnitObservers([("u", "linear")], buffer_bytes=1 << 20)
    collect = obs.collector("u", "input")
    x = torch.randn(64)
    for _ in range(5):
        collect(x.clone(), True)
    chunks = obs._staged[("u", "input")]
    assert len(chunks) == 1 and chunks[0][2] == 5 and obs._staged_bytes == x.numel() * 4
    collect(x + 1, True)
    assert [c[2] for c in obs._staged[("u", "input")]] == [5, 1]


def test_stacked_state_round_trip_and_damage() -> None:
    units = [("a", "linear"), ("b", "attention")]
    obs = UnitObservers(units)
    obs.collector("a", "input")(torch.randn(100))
    obs.collector("b", "p")(torch.rand(10, 10))
    state = obs.state_dict()
    assert state["hist/counts"].shape[0] == len(obs.hists) == 8
    back = UnitObservers(units)
    back.load_state_dict(state)
    for (unit, act), hist in obs.hists.items():
        mine, theirs = back.hists[(unit, act)].state_dict(), hist.state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), (unit, act)
    assert obs.compute(state)["a"]["input"] == obs.hists[("a", "input")].compute()
    assert obs.compute()["b"]["q"] is None
    with pytest.raises(AnnaError, match="names 7 histograms but holds 8"):
        bad = dict(state)
        bad["hist/keys"] = torch.frombuffer(bytearray(b'[["a","input"]' + b',["b","x"]' * 6 + b"]"), dtype=torch.uint8)
        UnitObservers(units).load_state_dict(bad)
    with pytest.raises(AnnaError, match="no histogram keys"):
        UnitObservers(units).load_state_dict({k: v for k, v in state.items() if k != "hist/keys"})


def test_observe_chains_onto_an_instance_forward_and_restores_it() -> None:
    """A forward already set on the instance (as accelerate's offload hooks do) keeps running under observation and
    is the one in place afterwards; a plain module gets its class forward back."""
    plain, patched = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    calls: list[int] = []
    original = patched.forward

    def offload_forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return original(x)

    patched.forward = offload_forward
    obs = UnitObservers([("plain", "linear"), ("patched", "linear")], buffer_bytes=0)
    x = torch.randn(5, 4)
    with observe([("plain", "linear", plain), ("patched", "linear", patched)], obs):
        assert torch.equal(patched(x), original(x)) and len(calls) == 1
        plain(x * 2)
    assert patched.forward is offload_forward and "forward" not in plain.__dict__
    assert obs.hists[("patched", "input")].count == obs.hists[("plain", "input")].count == x.numel()
    assert obs.hists[("plain", "input")].compute().max == float((x * 2).max())


def test_no_units_round_trip() -> None:
    obs = UnitObservers([])
    state = obs.state_dict()
    assert set(state) == {"hist/keys"} and obs.compute(state) == {}
    obs.load_state_dict(state)


def test_no_repeat_check_where_reads_cost_a_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """On accelerators the exact equality check would sync the host: hinted tensors are staged like any other."""
    import anna.calibrate.observers as observers_mod

    monkeypatch.setattr(observers_mod, "_reads_are_free", lambda t: False)
    monkeypatch.setattr(torch, "equal", lambda a, b: pytest.fail("torch.equal called"))
    obs = UnitObservers([("u", "linear")], buffer_bytes=1 << 20)
    collect = obs.collector("u", "input")
    x = torch.randn(64)
    for _ in range(3):
        collect(x, True)
    assert [c[2] for c in obs._staged[("u", "input")]] == [1, 1, 1]
    obs.flush()
    assert obs.hists[("u", "input")].count == 3 * 64
