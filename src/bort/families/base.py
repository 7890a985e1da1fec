"""The Family protocol: a search space of architectures with an exact, analytic cost model.

A family names integer architectural parameters, says which combinations are valid, builds a torch
module for any valid point and counts its parameters and operations without building it. The FPTAS
only ever talks to this interface, so it works for any network with the ABnC property.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from bort.errors import BortError

Arch = tuple[int, ...]


@dataclass(frozen=True)
class Cost:
    """Analytic cost of one architecture: total and non-embedding parameters, operations at a shape."""

    params: int
    effective_params: int
    ops: int


@runtime_checkable
class Family(Protocol):
    """What the search needs from a network family (a surrogate error for it is registered beside it)."""

    name: str
    param_names: tuple[str, ...]

    def maximum(self) -> Arch:
        """The maximum point T (the source architecture), which dominates the space."""

    def default_space(self) -> dict[str, list[int]]:
        """A built-in space of sub-architectures of the maximum point."""

    def invalid_reason(self, arch: Arch) -> str | None:
        """Why `arch` cannot be built, or None when it can."""

    def cost(self, arch: Arch, batch_size: int = 1, seq_len: int = 128) -> Cost:
        """Exact parameter counts and the operation count of one forward pass at (batch_size, seq_len)."""

    def build(self, arch: Arch) -> torch.nn.Module:
        """A freshly initialised module for `arch`."""

    def example_input(self, arch: Arch, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        """Keyword arguments for one forward pass of `arch` at the given shape (to measure latency)."""

    def save(self, arch: Arch, folder: Path) -> None:
        """Write the chosen architecture to `folder` (the `bert` family: a config `bort pretrain` accepts)."""

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this family's space (a resumed search and a latency cache entry must match it)."""


_REGISTRY: dict[str, Callable[..., Family]] = {}


def register_family(name: str, factory: Callable[..., Family]) -> None:
    """Make `factory(**options)` available as family `name` (e.g. to `bort.extract(family=name)`)."""
    _REGISTRY[name] = factory


def get_family(name: str, **options) -> Family:
    """Instantiate the registered family `name`."""
    if name not in _REGISTRY:
        raise BortError(f"unknown family '{name}'; known families: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)


def family_names() -> list[str]:
    return sorted(_REGISTRY)


def parse_arch(family: Family, text: str | Iterable[int]) -> Arch:
    """'4,8,1024,768' -> (4, 8, 1024, 768), checked against the family's parameter names."""
    try:
        values = [int(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise BortError(f"--arch '{text}' is not a comma-separated list of integers") from None
    names = ",".join(family.param_names)
    if len(values) != len(family.param_names):
        raise BortError(f"--arch needs {len(family.param_names)} values ({names}) for family "
                        f"'{family.name}', got {len(values)}")
    arch = tuple(values)
    if reason := family.invalid_reason(arch):
        raise BortError(f"architecture {names}={text} is invalid: {reason}")
    return arch


def check_fits(family: Family, arch: Arch, bytes_per_param: int, purpose: str) -> None:
    """Refuse, before building it, an architecture whose parameters (times `bytes_per_param`: 4 to run in fp32, 16 to
    train with AdamW) exceed this machine's memory: building it would only end in an out-of-memory kill."""
    import os

    need = family.cost(arch).params * bytes_per_param
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        with contextlib.suppress(OSError, ValueError):  # a container's limit ("max": none), cgroup v2 or v1
            memory = min(memory, int(limit.read_text().strip()))
    if torch.cuda.is_available():  # training and timing happen on the GPU
        memory = max(memory, torch.cuda.get_device_properties(0).total_memory)
    if need > memory:
        raise BortError(f"architecture {','.join(map(str, arch))} needs about {need / 2**30:,.0f} GiB to {purpose}, "
                        f"more than this machine's {memory / 2**30:,.0f} GiB; choose a smaller --arch")


@dataclass
class Space:
    """The candidate values of each architectural parameter; its points are the grid's product."""

    values: dict[str, list[int]]
    invalid: Counter = field(default_factory=Counter)

    @classmethod
    def of(cls, family: Family, values: Mapping[str, Iterable[int]]) -> Space:
        unknown = set(values) - set(family.param_names)
        missing = [n for n in family.param_names if n not in values]
        if unknown or missing:
            raise BortError(f"space for family '{family.name}' must map exactly {','.join(family.param_names)}; "
                            f"unknown {sorted(unknown) or 'none'}, missing {missing or 'none'}")
        clean = {}
        for name in family.param_names:
            vals = [values[name]] if isinstance(values[name], int | str) else values[name]
            try:
                ints = sorted({int(v) for v in vals})
            except (TypeError, ValueError):
                raise BortError(f"space parameter {name} must be a list of integers, got {vals!r}") from None
            if not ints or min(ints) < 1:
                raise BortError(f"space parameter {name} must list positive integers, got {vals!r}")
            clean[name] = ints
        return cls(clean)

    def points(self, family: Family) -> list[Arch]:
        """All valid points; the reasons for dropping the others are counted in `self.invalid`."""
        archs = list(itertools.product(*(self.values[n] for n in family.param_names)))
        reasons = [family.invalid_reason(arch) for arch in archs]
        self.invalid = Counter(reason for reason in reasons if reason)
        return [arch for arch, reason in zip(archs, reasons, strict=True) if not reason]

    @property
    def size(self) -> int:
        return math.prod(len(vals) for vals in self.values.values())
