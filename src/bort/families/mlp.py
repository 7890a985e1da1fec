"""The `mlp` family: the toy network of the Bort article, parameters (D, a, b, c, d).

Each of the D blocks is two linear layers, x (width b) -> W1 x + b1 (width a) -> W2 h + b2 (width d),
with c the second layer's input width, so one block has a*b + c + c*d + d parameters and the article's
examples give (2, 4, 3, 4, 4) -> 72 and (2, 3, 3, 3, 2) -> 40. The article counts blocks without
saying how they connect, and in both of its examples d != b, so the blocks cannot be chained; we run
them as D parallel branches on the same input and sum their outputs, which builds every point the
article counts. Valid points need a == c (the first layer's output feeds the second).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from bort import io
from bort.families.base import Arch, Cost, register_family


class ParallelBlocks(nn.Module):
    def __init__(self, depth: int, a: int, b: int, c: int, d: int):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(b, a), nn.ReLU(), nn.Linear(c, d)) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(block(x) for block in self.blocks)


class MLPFamily:
    name = "mlp"
    param_names = ("D", "a", "b", "c", "d")

    def __init__(self, maximum: Arch = (4, 16, 16, 16, 16)):
        self._maximum = tuple(maximum)

    def maximum(self) -> Arch:
        return self._maximum

    def default_space(self) -> dict[str, list[int]]:
        D, a, b, c, d = self._maximum
        return {"D": list(range(1, D + 1)), "a": [max(1, a // 4), max(1, a // 2), a], "b": [b],
                "c": [max(1, c // 4), max(1, c // 2), c], "d": [d]}

    def invalid_reason(self, arch: Arch) -> str | None:
        if len(arch) != 5:
            return "needs 5 values D,a,b,c,d"
        if min(arch) < 1:
            return "values must be positive"
        return "a must equal c" if arch[1] != arch[3] else None

    def cost(self, arch: Arch, batch_size: int = 1, seq_len: int = 1) -> Cost:
        D, a, b, c, d = arch
        params = D * (a * b + c + c * d + d)
        rows = batch_size * seq_len
        ops = rows * (D * (2 * a * b + a + a + 2 * c * d + d) + (D - 1) * d)  # matmuls, biases, ReLU, branch sum
        return Cost(params=params, effective_params=params, ops=ops)

    def build(self, arch: Arch) -> nn.Module:
        return ParallelBlocks(*arch)

    def save(self, arch: Arch, folder: Path) -> None:
        io.write_json(folder / "arch.json", dict(zip(self.param_names, arch, strict=True)))

    def fingerprint(self) -> dict[str, Any]:
        return {"family": self.name, "maximum": list(self._maximum)}

    def example_input(self, arch: Arch, batch_size: int, seq_len: int = 1) -> dict[str, torch.Tensor]:
        return {"x": torch.randn(batch_size * seq_len, arch[2], generator=torch.Generator().manual_seed(0))}


register_family("mlp", MLPFamily)
