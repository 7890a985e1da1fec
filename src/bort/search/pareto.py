"""Pareto front of points to be minimised on every objective."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_mask(points: Sequence[Sequence[float]]) -> list[bool]:
    """True for each point that no other point dominates (<= on all objectives, < on at least one)."""
    dominates = lambda a, b: all(x <= y for x, y in zip(a, b, strict=True)) and a != b  # noqa: E731
    return [not any(dominates(other, p) for other in points if other is not p) for p in points]
