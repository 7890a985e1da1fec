"""The FPTAS for optimal subarchitecture extraction (de Wynter 2020), with successive halving.

1. Enumerate the space Ξ, drop invalid points (counting why) and compute the exact, cheap p(ξ) and i(ξ).
2. Keep Ξ': the candidates the maximum point T strictly dominates on p and i (the others have W <= 0).
3. Train every (candidate, θ) arm for a bounded budget and measure its surrogate error ê(ξ).
4. W(ξ) = [(p(T) - p(ξ)) / p(T)] * [(i(T) - i(ξ)) / i(T)] / ê(ξ), best over Θ; choose the maximum.

The per-candidate budget is n(ε) = ceil(STEPS_PER_INVERSE_EPSILON / ε) steps. The paper trains every arm for n(ε) steps,
O(|Ξ| + |Ξ'||Θ| n(ε) |B|) in all. By default we add successive halving: all arms get n/η^k steps, the best 1/η by W go
on to η times more, until the survivors get the full n(ε). Arms are retrained from scratch at each rung with the same
seed, so an arm's ê depends only on (arch, θ, steps, seed): that is what makes a resumed or multi-process run give
exactly an uninterrupted run's results. `halving=False` gives the paper's plain schedule.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bort.errors import BortError, NonFiniteLoss
from bort.families.base import Arch, Family
from bort.search.pareto import pareto_mask
from bort.search.store import Evaluation, ResultsStore

STEPS_PER_INVERSE_EPSILON = 8
MIN_RUNG_STEPS = 4


def steps_for_epsilon(epsilon: float) -> int:
    """n(ε): the surrogate budget of a finalist, linear (so polynomial) in 1/ε."""
    if not 0 < epsilon < 1:
        raise BortError(f"--epsilon must lie in (0, 1), got {epsilon}")
    return math.ceil(STEPS_PER_INVERSE_EPSILON / epsilon)


def rung_schedule(steps: int, arms: int, eta: int = 3, halving: bool = True) -> list[tuple[int, int]]:
    """[(steps, arms)] per rung, cheapest first; the last rung trains its arms for the full `steps`. Rungs are added
    while the cheapest one still gets MIN_RUNG_STEPS steps and the last keeps >= η arms."""
    levels = 1
    if halving:
        while math.ceil(steps / eta**levels) >= MIN_RUNG_STEPS and math.ceil(arms / eta**levels) >= eta:
            levels += 1
    return [(math.ceil(steps / eta ** (levels - 1 - k)), math.ceil(arms / eta**k)) for k in range(levels)]


def arm_seed(seed: int, arch: Arch, theta: int) -> int:
    return int(hashlib.sha256(f"{seed}|{','.join(map(str, arch))}|{theta}".encode()).hexdigest()[:8], 16)


@dataclass
class Constraints:
    """The user's targets. A search with targets chooses the most accurate finalist (lowest ê) that meets them all;
    `min_speedup` is relative to the maximum point's speed (operation count, or measured latency), which the search
    sets as `reference_speed`."""

    max_params: int | None = None
    max_effective_params: int | None = None
    max_latency_ms: float | None = None
    min_speedup: float | None = None
    reference_speed: float | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.max_params, self.max_effective_params, self.max_latency_ms,
                                           self.min_speedup))

    def allows(self, c: Candidate, measured: bool = False) -> bool:
        return ((self.max_params is None or c.params <= self.max_params)
                and (self.max_effective_params is None or c.effective_params <= self.max_effective_params)
                and (self.max_latency_ms is None or (c.latency_ms is not None and c.latency_ms <= self.max_latency_ms))
                and (self.min_speedup is None or c.speed(measured) * self.min_speedup <= self.reference_speed))

    def describe(self) -> str:
        flags = (("--speedup", self.min_speedup), ("--max-params", self.max_params),
                 ("--max-effective-params", self.max_effective_params), ("--max-latency-ms", self.max_latency_ms))
        return " ".join(f"{flag} {value:g}" for flag, value in flags if value is not None)


@dataclass(eq=False)
class Candidate:
    arch: Arch
    params: int
    effective_params: int
    ops: int
    latency_ms: float | None = None
    error: float | None = None  # best ê over Θ at the highest rung this candidate reached
    steps: int = 0  # that rung's budget
    theta: int | None = None  # index of the best Θ entry
    W: float | None = None
    pareto: bool | None = None  # on the front of the candidates trained for the full budget (None: not trained so far)

    def speed(self, measured: bool) -> float:
        return self.latency_ms if measured else self.ops


@dataclass
class SearchResult:
    candidates: list[Candidate]  # every candidate that was trained at least once
    maximum: Candidate
    chosen: Candidate  # W-optimal among the finalists (trained for n(ε) steps)
    constrained: Candidate | None  # the target's choice: the lowest ê among the finalists that meet the targets
    space_size: int
    invalid: dict[str, int]
    dominated_out: int  # valid points T does not strictly dominate (W <= 0)
    rungs: list[tuple[int, int]]
    steps: int  # n(ε)
    planned_steps: int
    trained_steps: int  # steps actually run by this invocation (0 for a fully resumed run)
    seconds: float
    finalists: list[Candidate] = field(default_factory=list)
    feasible: list[Candidate] = field(default_factory=list)  # the finalists meeting the targets, lowest ê first


def w_coefficient(c: Candidate, t: Candidate, measured: bool, error: float) -> float:
    return ((t.params - c.params) / t.params) * ((t.speed(measured) - c.speed(measured)) / t.speed(measured)) / error


class FPTAS:
    """One extraction search: the space, the surrogate, Θ and ε, over a results store."""

    def __init__(self, family: Family, points: Sequence[Arch], surrogate: Callable[..., float],
                 thetas: Sequence[Mapping[str, float]], epsilon: float = 0.2, steps: int | None = None,
                 measured_speed: bool = False, latency: Callable[[Arch], float] | None = None,
                 latency_batch_size: int = 1, latency_seq_len: int = 128, constraints: Constraints | None = None,
                 halving: bool = True, eta: int = 3, seed: int = 0):
        if not thetas:
            raise BortError("Θ is empty; give at least one set of training hyperparameters")
        self.family, self.surrogate, self.thetas, self.epsilon = family, surrogate, list(thetas), epsilon
        self.steps = steps if steps is not None else steps_for_epsilon(epsilon)
        if self.steps < 1:
            raise BortError(f"--steps must be at least 1, got {self.steps}")
        self.constraints = constraints or Constraints()
        self.measured, self.latency, self.halving, self.eta, self.seed = measured_speed, latency, halving, eta, seed
        needs_latency = measured_speed or self.constraints.max_latency_ms is not None
        if needs_latency and latency is None:
            raise BortError("measured speed or --max-latency-ms needs a latency function")

        def candidate(arch: Arch) -> Candidate:
            cost = family.cost(arch, latency_batch_size, latency_seq_len)
            return Candidate(arch, cost.params, cost.effective_params, cost.ops,
                             latency(arch) if needs_latency else None)

        self.maximum = candidate(family.maximum())
        everything = [candidate(a) for a in points]
        self.pool = [c for c in everything if c.params < self.maximum.params and c.ops < self.maximum.ops
                     and (not measured_speed or c.latency_ms < self.maximum.latency_ms)]
        self.dominated_out, self._by_arch = len(everything) - len(self.pool), {c.arch: c for c in self.pool}
        if not self.pool:
            raise BortError("no candidate is smaller and cheaper than the maximum point; widen the space")
        self.constraints.reference_speed = self.maximum.speed(measured_speed)
        if self.constraints and not any(self._allowed(c) for c in self.pool):
            fastest = self.maximum.speed(measured_speed) / min(c.speed(measured_speed) for c in self.pool)
            raise BortError(f"no candidate in the space meets {self.constraints.describe()} (the fastest is "
                            f"{fastest:.1f}x faster than the source); relax the targets or widen the space")
        self._feasible = sum(self._allowed(c) for c in self.pool) * len(self.thetas) if self.constraints else 0
        self._plan_rungs()

    def _plan_rungs(self) -> None:
        arms = len(self.pool) * len(self.thetas)
        self._schedule = rung_schedule(self.steps, arms, self.eta, self.halving)
        # the best feasible arms by ê are promoted beside the best by W: at most ceil(feasible / η^k) more at rung k
        self.rungs = [(s, min(arms, a + (math.ceil(self._feasible / self.eta**k) if k else 0)))
                      for k, (s, a) in enumerate(self._schedule)]

    def with_steps(self, steps: int) -> FPTAS:
        """The same search with `steps` per finalist, its rungs planned again."""
        other = copy.copy(self)
        other.steps = steps
        other._plan_rungs()
        return other

    @property
    def planned_steps(self) -> int:
        return sum(steps * arms for steps, arms in self.rungs)

    def run(self, store: ResultsStore, progress=None, rank: int = 0, world_size: int = 1,
            gather: Callable[[list], list] | None = None) -> SearchResult:
        """Train the arms rung by rung; each process takes every `world_size`-th arm of a rung."""
        start, trained = time.perf_counter(), 0
        arms = [(c.arch, t) for c in self.pool for t in range(len(self.thetas))]
        done = store.evaluations()
        in_main_file = set(store.evaluations(own_only=True)) if rank == 0 else set()
        results: dict[tuple[Arch, int], Evaluation] = {}
        for level, (steps, _) in enumerate(self.rungs):
            mine = [arm for i, arm in enumerate(arms) if i % world_size == rank]
            if progress is not None:  # the plan's arm counts are upper bounds; the bar follows what is known
                progress.total = progress.n + len(mine) * steps + sum(
                    s * -(-a // world_size) for s, a in self.rungs[level + 1:])
                progress.refresh()
            new = []
            for arch, theta in mine:
                ev = done.get((arch, theta, steps))
                if ev is None:
                    ev = self._evaluate(store, arch, theta, steps)
                    in_main_file.add(ev.key)
                    new.append(ev)
                    trained += steps
                if progress is not None:
                    progress.update(steps)
                    progress.set_postfix_str(f"rung {level + 1}/{len(self.rungs)} {','.join(map(str, arch))}",
                                             refresh=False)
            for ev in gather(new) if gather is not None else new:
                if rank == 0 and ev.key not in in_main_file:
                    store.add(ev)  # process 0's file ends up holding the whole run
                    in_main_file.add(ev.key)
                done[ev.key] = ev
            results.update({arm: done[(*arm, steps)] for arm in arms})
            if level + 1 < len(self.rungs):
                arms = self._promote(arms, results, level + 1)
        return self._result(results, arms, trained, time.perf_counter() - start)

    def recheck(self, store: ResultsStore, result: SearchResult, factor: int = 4, progress=None) -> dict:
        """The approximation check: retrain the finalists' arms with `factor` x n(ε) steps and choose again. Passes
        when W (at the larger budget) of the architecture chosen at ε is within (1 - ε) of the W of the architecture
        chosen at the larger budget. Runs through the store, so it resumes too."""
        steps, done = factor * self.steps, store.evaluations()
        best: dict[Arch, float] = {}
        for c in result.finalists:
            for theta in range(len(self.thetas)):
                ev = done.get((c.arch, theta, steps)) or self._evaluate(store, c.arch, theta, steps)
                if progress is not None:
                    progress.update(steps)
                best[c.arch] = max(best.get(c.arch, -math.inf), w_coefficient(c, self.maximum, self.measured, ev.error))
        larger = min(best, key=lambda a: (-best[a], a))
        # every finalist diverging at the larger budget (W = 0) leaves the check undecided, not a division by zero
        ratio = best[result.chosen.arch] / best[larger] if best[larger] > 0 else None
        return {"factor": factor, "steps": steps, "chosen_at_epsilon": list(result.chosen.arch),
                "W_at_epsilon": result.chosen.W, "chosen_at_larger_budget": list(larger),
                "W_at_larger_budget": best[larger], "W_of_epsilon_choice_at_larger_budget": best[result.chosen.arch],
                "ratio": ratio, "epsilon": self.epsilon,
                "within_1_minus_epsilon": None if ratio is None else ratio >= 1 - self.epsilon}

    def _evaluate(self, store: ResultsStore, arch: Arch, theta: int, steps: int) -> Evaluation:
        """Train one arm now and store its ê; an arm whose training diverges (or whose ê is NaN) gets ê = inf, so
        W = 0, and the search goes on."""
        start = time.perf_counter()
        try:
            error = float(self.surrogate(arch, self.thetas[theta], steps, arm_seed(self.seed, arch, theta)))
        except (NonFiniteLoss, FloatingPointError):
            error = math.inf
        if error <= 0:
            raise BortError(f"surrogate error of {arch} with Θ[{theta}] is {error}; a surrogate must return ê > 0")
        ev = Evaluation(arch, theta, steps, math.inf if math.isnan(error) else error, time.perf_counter() - start)
        store.add(ev)
        return ev

    def _allowed(self, c: Candidate) -> bool:
        return self.constraints.allows(c, self.measured)

    def _promote(self, arms, results, level: int) -> list[tuple[Arch, int]]:
        """The rung's planned number of arms by W, plus (with targets) the planned number of feasible arms by ê (the
        target's choice is the most accurate of them, so that is what keeps them alive). Each group keeps its own
        size, so the rungs never grow past the plan."""
        ranked = sorted(arms, key=lambda a: (-w_coefficient(self._by_arch[a[0]], self.maximum, self.measured,
                                                            results[a].error), a))
        keep = ranked[:self._schedule[level][1]]
        if self.constraints:
            feasible = sorted((a for a in arms if self._allowed(self._by_arch[a[0]])),
                              key=lambda a: (results[a].error, a))
            keep += [a for a in feasible[:math.ceil(self._feasible / self.eta**level)] if a not in keep]
        return sorted(keep)

    def _result(self, results, finalists, trained: int, seconds: float) -> SearchResult:
        final_steps = self.rungs[-1][0]
        for (arch, theta), ev in results.items():
            c = self._by_arch[arch]
            if ev.steps > c.steps or (ev.steps == c.steps and (c.error is None or ev.error < c.error)):
                c.error, c.steps, c.theta = ev.error, ev.steps, theta
        evaluated = [c for c in self.pool if c.error is not None]
        for c in evaluated:
            c.W = w_coefficient(c, self.maximum, self.measured, c.error)
        at_budget = [c for c in evaluated if c.steps == final_steps]  # ê is only comparable at one budget
        front = pareto_mask([(c.params, c.speed(self.measured), c.error) for c in at_budget])
        for c, on_front in zip(at_budget, front, strict=True):
            c.pareto = on_front
        final = sorted({self._by_arch[a] for a, _ in finalists if self._by_arch[a].steps == final_steps},
                       key=lambda c: (-c.W, c.arch))
        feasible = sorted((c for c in final if self._allowed(c)), key=lambda c: (c.error, -c.W, c.arch)) \
            if self.constraints else []
        return SearchResult(candidates=evaluated, maximum=self.maximum, chosen=final[0], finalists=final,
                            feasible=feasible, constrained=feasible[0] if feasible else None, space_size=0,
                            invalid={}, seconds=seconds, dominated_out=self.dominated_out, rungs=self.rungs,
                            steps=self.steps, planned_steps=self.planned_steps, trained_steps=trained)
