"""The results store of one extraction run: crash-safe, resumable, shared by several processes.

A run folder holds `run.json` (the settings that define the run, so a resume with other settings is
refused) and `evaluations*.jsonl`: one line per finished surrogate run, appended and fsynced the
moment it finishes. A line cut short by a crash is ignored on reading; that run is simply redone.
Each process writes its own file (`evaluations.jsonl` for process 0, `evaluations.rank{r}.jsonl` for
the others), so no two processes ever write the same file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bort.errors import BortError

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
        self.folder = Path(folder)
        self.rank = rank
        name = "evaluations.jsonl" if rank == 0 else f"evaluations.rank{rank}.jsonl"
        self.path = self.folder / name

    def open(self, settings: dict[str, Any], resume: bool = False, overwrite: bool = False) -> None:
        """Start a new run or re-open an old one; refuse to mix two different runs in one folder."""
        run_file = self.folder / "run.json"
        if run_file.exists() and not (resume or overwrite):
            raise BortError(f"{self.folder} already holds a run; pass --resume to continue it or --overwrite "
                            "to start again")
        if resume and run_file.exists():
            previous = json.loads(run_file.read_text())
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            if changed:
                raise BortError(f"cannot resume {self.folder}: settings differ from the stored run "
                                f"({', '.join(changed)}); use the same flags, or --overwrite to start again")
            return
        if self.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            for old in self.folder.glob("evaluations*.jsonl"):
                old.unlink()
            tmp = run_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))
            os.replace(tmp, run_file)

    def add(self, evaluation: Evaluation) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(asdict(evaluation)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def evaluations(self, own_only: bool = False) -> dict[Key, Evaluation]:
        """Every complete line in every process's file (or only in this process's own file)."""
        found: dict[Key, Evaluation] = {}
        files = [self.path] if own_only else sorted(self.folder.glob("evaluations*.jsonl"))
        for file in files:
            if not file.exists():
                continue
            for line in file.read_text().splitlines():
                try:
                    raw = json.loads(line)
                    ev = Evaluation(tuple(raw["arch"]), int(raw["theta"]), int(raw["steps"]), float(raw["error"]),
                                    float(raw["seconds"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash
                found.setdefault(ev.key, ev)
        return found
