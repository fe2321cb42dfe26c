"""Component capture and replay: bounded reservoir, exact replay, MSE by hand, save/load without pickles."""

from __future__ import annotations

import torch
from torch import nn

from anna.evaluate.capture import capture_calls, load_capture, replay_mse, save_capture


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, *, scale: float = 1.0, extra: dict | None = None) -> tuple[torch.Tensor]:
        y = self.lin(x) * scale
        if extra is not None:
            y = y + extra["bias"]
        return (y,)


def _run(module: nn.Module, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 4, generator=g) for _ in range(n)]
    for i, x in enumerate(xs):
        module(x, scale=1.0 + i, extra={"bias": torch.full((3,), float(i))})
    return xs


def test_capture_is_bounded_and_replays_exactly(tmp_path):
    torch.manual_seed(0)
    toy = Toy()
    with capture_calls(toy, "model", max_calls=5, seed=3) as cap:
        _run(toy, 40)
    assert cap.seen == 40 and len(cap.calls) == 5
    assert not toy._forward_pre_hooks and not toy._forward_hooks  # hooks removed
    scales = sorted(c.kwargs["scale"] for c in cap.calls)
    assert max(scales) > 6  # a reservoir over all calls, not the first five
    assert replay_mse(toy, cap) == 0.0

    other = Toy()
    with torch.no_grad():
        other.lin.weight.copy_(toy.lin.weight + 0.1)
        other.lin.bias.copy_(toy.lin.bias)
    want_sum, count = 0.0, 0
    for c in cap.calls:
        with torch.no_grad():
            got = other(*c.args, **c.kwargs)[0]
        want_sum += float(((got.double() - c.output.double()) ** 2).sum())
        count += got.numel()
    assert replay_mse(other, cap) == want_sum / count > 0

    assert save_capture(cap, tmp_path)
    back = load_capture(tmp_path, "model")
    assert back is not None and back.seen == 40 and len(back.calls) == 5
    for a, b in zip(cap.calls, back.calls, strict=True):
        assert torch.equal(a.args[0], b.args[0]) and a.kwargs["scale"] == b.kwargs["scale"]
        assert torch.equal(a.kwargs["extra"]["bias"], b.kwargs["extra"]["bias"]) and torch.equal(a.output, b.output)
    assert replay_mse(other, back) == replay_mse(other, cap)
    assert load_capture(tmp_path, "unet") is None


def test_capture_with_unstorable_inputs_is_not_saved(tmp_path):
    toy = Toy()
    with capture_calls(toy, "model", max_calls=2) as cap:
        toy(torch.randn(1, 4), extra={"bias": torch.zeros(3), "obj": object()})
    assert not save_capture(cap, tmp_path)
    assert load_capture(tmp_path, "model") is None
