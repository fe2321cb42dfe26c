"""Small networks whose units are `units.0`, `units.1`, ...: the error models' test cases; and a calibrated
quantizer for any small network."""

import torch
from torch import nn

from anna.analyze.quantizer import UnitQuantizer
from anna.calibrate.hooks import observe
from anna.calibrate.observers import UnitObservers
from anna.units import unit_modules


def calibrated_quantizer(model: nn.Module, samples: list) -> UnitQuantizer:
    """A UnitQuantizer for `model` whose statistics come from running it on `samples`."""
    units = unit_modules(model)
    obs = UnitObservers([(n, k) for n, k, _ in units])
    with torch.no_grad(), observe(units, obs):
        for x in samples:
            model(x)
    return UnitQuantizer(model, obs.compute())


class Branches(nn.Module):
    """y = sum of parallel linears: every unit's output delta reaches the output unchanged, so deltas add exactly."""

    def __init__(self, n: int = 5, d: int = 16) -> None:
        super().__init__()
        self.units = nn.ModuleList(nn.Linear(d, d) for _ in range(n))

    def forward(self, x):
        return sum(u(x) for u in self.units)


class Chain(nn.Module):
    def __init__(self, n: int = 4, d: int = 16) -> None:
        super().__init__()
        self.units = nn.ModuleList(nn.Linear(d, d) for _ in range(n))

    def forward(self, x):
        for u in self.units:
            x = torch.tanh(u(x))
        return x
