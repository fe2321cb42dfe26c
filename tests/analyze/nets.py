"""Small networks whose units are `units.0`, `units.1`, ...: the error models' test cases."""

import torch
from torch import nn


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
