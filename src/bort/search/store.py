"""The results store of one extraction run: crash-safe, resumable, shared by several processes.

A run folder holds `run.json` (the settings that define the run, so a resume with other settings is refused) and
`evaluations*.jsonl`: one line per finished surrogate run, appended and fsynced the moment it finishes. A line cut short
by a crash is ignored on reading (that run is simply redone) and cut off before the next line is appended. Each process
writes its own file (`evaluations.jsonl` for process 0, `evaluations.rank{r}.jsonl` for the others), so no two processes
ever write the same file.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bort import io

Key = tuple[tuple[int, ...], int, int]  # (arch, theta index, steps)


@dataclass(frozen=True)
class Evaluation:
    """One finished surrogate run: an architecture, one Θ entry, a step budget, and its error ê."""

    arch: tuple[int, ...]
    theta: int
    steps: int
    error: float
    seconds: float

    @property
    def key(self) -> Key:
        return (self.arch, self.theta, self.steps)


class ResultsStore:
    def __init__(self, folder: str | os.PathLike, rank: int = 0):
        self.folder, self.rank = Path(folder), rank
        self.path = self.folder / ("evaluations.jsonl" if rank == 0 else f"evaluations.rank{rank}.jsonl")

    def open(self, settings: dict[str, Any], resume: bool = False) -> None:
        """Start a new run (in a folder `io.prepare_output` made empty) or re-open an old one; refuse to mix two
        different runs in one folder."""
        run_file = self.folder / "run.json"
        if resume and run_file.exists():
            return io.same_settings(io.read_json(run_file), settings, f"the search in {self.folder}")
        if self.rank == 0:
            io.write_json(run_file, settings)

    def add(self, evaluation: Evaluation) -> None:
        io.append_jsonl(self.path, asdict(evaluation))

    def evaluations(self, own_only: bool = False) -> dict[Key, Evaluation]:
        """Every complete line in every process's file (or only in this process's own file); ê = null is a
        diverged arm (inf)."""
        found: dict[Key, Evaluation] = {}
        for file in [self.path] if own_only else sorted(self.folder.glob("evaluations*.jsonl")):
            for raw in io.read_jsonl(file):
                try:
                    ev = Evaluation(tuple(raw["arch"]), int(raw["theta"]), int(raw["steps"]),
                                    math.inf if raw["error"] is None else float(raw["error"]), float(raw["seconds"]))
                except (ValueError, KeyError, TypeError):
                    continue
                found.setdefault(ev.key, ev)
        return found
