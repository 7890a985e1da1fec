"""The FPTAS on tiny spaces: schedule, W, Pareto front, constraints, the store, resume and sharding."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bort import extract
from bort.errors import BortError, NonFiniteLoss
from bort.families import Space, get_family
from bort.search.fptas import FPTAS, Candidate, Constraints, rung_schedule, steps_for_epsilon, w_coefficient
from bort.search.pareto import pareto_mask
from bort.search.store import Evaluation, ResultsStore
from bort.search.surrogate import ToySurrogate

MLP = get_family("mlp")
POINTS = Space.of(MLP, MLP.default_space()).points(MLP)


def test_steps_grow_polynomially_in_one_over_epsilon():
    assert steps_for_epsilon(0.2) == 40
    assert steps_for_epsilon(0.05) == 4 * steps_for_epsilon(0.2)
    with pytest.raises(BortError, match="epsilon"):
        steps_for_epsilon(1.5)


def test_rung_schedule():
    assert rung_schedule(40, 300) == [(5, 300), (14, 100), (40, 34)]
    assert rung_schedule(40, 300, halving=False) == [(40, 300)]
    assert rung_schedule(40, 2) == [(40, 2)]
    assert rung_schedule(6, 300) == [(6, 300)]  # a cheaper rung would get fewer than 4 steps


def test_w_coefficient_matches_the_definition():
    t = Candidate((4,), params=100, effective_params=80, ops=1000)
    c = Candidate((2,), params=40, effective_params=20, ops=250)
    assert w_coefficient(c, t, measured=False, error=0.5) == pytest.approx(0.6 * 0.75 / 0.5)


def test_pareto_mask():
    assert pareto_mask([(1, 1, 3), (2, 2, 2), (3, 3, 3), (1, 1, 3)]) == [True, True, False, True]


def make_search(**kwargs) -> FPTAS:
    return FPTAS(MLP, POINTS, ToySurrogate(MLP), [{"lr": 3e-3}, {"lr": 1e-2}], epsilon=0.5, **kwargs)


def test_search_chooses_the_best_finalist(tmp_path):
    search = make_search()
    result = search.run(ResultsStore(tmp_path))
    assert result.chosen.steps == search.steps == 16
    assert max(c.W for c in result.finalists) == result.chosen.W
    assert len(result.candidates) == len(search.pool)
    assert any(c.pareto for c in result.candidates)
    assert result.trained_steps == search.planned_steps
    # Resuming a finished run trains nothing and gives the same answer.
    again = make_search().run(ResultsStore(tmp_path))
    assert again.trained_steps == 0 and again.chosen.arch == result.chosen.arch


def test_constraints_pick_a_feasible_finalist(tmp_path):
    limit = sorted(c.params for c in make_search().pool)[2]
    result = make_search(constraints=Constraints(max_params=limit)).run(ResultsStore(tmp_path))
    assert result.constrained is not None and result.constrained.params <= limit
    with pytest.raises(BortError, match="no candidate in the space meets --max-params 1 "):
        make_search(constraints=Constraints(max_params=1))


@pytest.mark.parametrize("speedup", [1.5, 3.0])
def test_a_speedup_target_chooses_the_most_accurate_finalist_that_meets_it(tmp_path, speedup):
    search = make_search(constraints=Constraints(min_speedup=speedup))
    result = search.run(store := ResultsStore(tmp_path))
    trained = Counter(steps for _, _, steps in store.evaluations())
    assert all(trained[steps] <= arms for steps, arms in search.rungs)  # the plan is an upper bound
    fast_enough = [c for c in result.finalists if result.maximum.ops / c.ops >= speedup]
    assert fast_enough and result.constrained is min(fast_enough, key=lambda c: (c.error, -c.W))
    assert result.chosen is max(result.finalists, key=lambda c: c.W)  # the W-optimum is still reported beside it
    assert result.constrained.error <= result.chosen.error or result.maximum.ops / result.chosen.ops < speedup
    fastest = max(result.maximum.ops / c.ops for c in make_search().pool)
    with pytest.raises(BortError, match=rf"meets --speedup 1000 \(the fastest is {fastest:.1f}x faster"):
        make_search(constraints=Constraints(min_speedup=1000))


def test_store_ignores_a_line_cut_short_and_appends_after_it(tmp_path):
    store = ResultsStore(tmp_path)
    store.open({"a": 1})
    store.add(Evaluation((1, 2), 0, 4, 0.5, 1.0))
    with open(store.path, "a") as f:
        f.write('{"arch": [3, 4], "theta": 0, "ste')
    assert list(store.evaluations()) == [((1, 2), 0, 4)]
    store.add(Evaluation((5, 6), 0, 4, math.inf, 1.0))  # a diverged arm, after the torn line
    lines = store.path.read_text().splitlines()
    assert [json.loads(line)["arch"] for line in lines] == [[1, 2], [5, 6]]  # strict JSON, nothing glued
    assert "Infinity" not in store.path.read_text() and store.evaluations()[((5, 6), 0, 4)].error == math.inf
    with pytest.raises(BortError, match=r"other settings \(a 2 now, 1 then\)"):
        ResultsStore(tmp_path).open({"a": 2}, resume=True)


def test_interrupted_search_resumes_to_identical_results(tmp_path):
    full = make_search().run(ResultsStore(tmp_path / "full"))

    class Crash(Exception):
        pass

    calls = {"n": 0}
    toy = ToySurrogate(MLP)

    def crashing(*args):
        calls["n"] += 1
        if calls["n"] > 9:
            raise Crash
        return toy(*args)

    with pytest.raises(Crash):
        FPTAS(MLP, POINTS, crashing, [{"lr": 3e-3}, {"lr": 1e-2}], epsilon=0.5).run(ResultsStore(tmp_path / "cut"))
    resumed = make_search().run(ResultsStore(tmp_path / "cut"))
    assert resumed.trained_steps < full.trained_steps
    assert [(c.arch, c.error, c.W) for c in resumed.candidates] == [(c.arch, c.error, c.W) for c in full.candidates]


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bort.cli", *args]


MLP_RUN = ("extract", "--family", "mlp", "--epsilon", "0.1", "--theta", "lr=3e-3,1e-2", "--quiet")


def test_killed_cli_run_resumes_to_the_uninterrupted_result(tmp_path):
    """Kill a real `bort extract` process midway, resume it, and compare with an uninterrupted run."""
    subprocess.run(cli(*MLP_RUN, "--output", str(tmp_path / "full")), check=True, capture_output=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(cli(*MLP_RUN, "--output", str(cut)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        lines = (cut / "evaluations.jsonl").read_text().splitlines() if (cut / "evaluations.jsonl").exists() else []
        if len(lines) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "result.json").exists(), "the run finished before it could be killed"
    done = subprocess.run(cli(*MLP_RUN, "--output", str(cut)), capture_output=True, text=True)
    assert done.returncode == 2 and "--resume" in done.stderr
    with open(cut / "evaluations.jsonl", "a") as f:  # a SIGKILL can leave half a line
        f.write('{"arch": [1, 4, 16, 4')
    subprocess.run(cli(*MLP_RUN, "--output", str(cut), "--resume"), check=True, capture_output=True)
    assert read_csv(cut / "candidates.csv") == read_csv(tmp_path / "full" / "candidates.csv")
    resumed, full = (json.loads((d / "result.json").read_text()) for d in (cut, tmp_path / "full"))
    assert resumed["chosen"] == full["chosen"] and resumed["trained_steps"] < full["trained_steps"]


def test_two_processes_share_the_candidates(tmp_path):
    """torchrun with 2 CPU processes (gloo): candidates are split, gathered into one identical store."""
    single = extract(family="mlp", epsilon=0.25, output=str(tmp_path / "one"), progress=False, theta="lr=3e-3")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "bort.cli",
                          "extract", "--family", "mlp", "--epsilon", "0.25", "--theta", "lr=3e-3", "--quiet",
                          "--output", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "two" / "evaluations.rank1.jsonl").exists()
    main = (tmp_path / "two" / "evaluations.jsonl").read_text().splitlines()
    assert len(main) == len((tmp_path / "one" / "evaluations.jsonl").read_text().splitlines())
    assert read_csv(tmp_path / "two" / "candidates.csv") == read_csv(single.output / "candidates.csv")


def test_measured_speed_and_latency_constraint(tmp_path):
    result = extract(family="mlp", epsilon=0.5, theta="lr=3e-3", speed="measured", max_latency_ms=10.0,
                     output=str(tmp_path), progress=False)
    rows = read_csv(tmp_path / "candidates.csv")
    assert all(float(r["latency_ms"]) > 0 for r in rows)
    assert result.constrained is not None and result.constrained.latency_ms <= 10.0
    assert result.summary["chosen"]["ratios_to_source"]["latency"] > 0
    # the Python result names what chosen/ and result.json hold; the W-optimum is reported beside it
    assert result.chosen is result.constrained and result.w_optimum is result.search.chosen
    assert tuple(result.summary["chosen"]["arch"].values()) == result.chosen.arch
    assert tuple(result.summary["w_optimum"]["arch"].values()) == result.w_optimum.arch


def test_a_resumed_search_with_other_options_is_refused_before_any_timing(tmp_path, monkeypatch):
    """Timing every candidate is minutes in ONNX Runtime: a changed option is refused before it, in one line."""
    from bort.search import extraction
    from bort.speed.latency import LatencyCache

    settings = dict(family="mlp", epsilon=0.5, theta="lr=3e-3", speed="measured", output=str(tmp_path),
                    progress=False)
    extract(**settings)

    def no_timing(*args, **kwargs):
        raise AssertionError("timed a candidate before refusing the changed option")

    monkeypatch.setattr(LatencyCache, "measure", no_timing)
    with pytest.raises(BortError, match=r"--batch-size 4 now, 8 then"):
        extract(**settings, batch_size=4, resume=True)
    monkeypatch.setattr(extraction, "build_search", no_timing)  # the check reads run.json alone
    with pytest.raises(BortError, match="other settings"):
        extract(**{**settings, "theta": "lr=1e-3"}, resume=True)


def test_a_measured_target_is_confirmed_side_by_side_with_the_source(tmp_path, monkeypatch):
    """The search's latencies are separate timings: its choice is the most accurate finalist that still meets the
    target when timed side by side with the source, tried in order of ê."""
    from bort.search import extraction

    timed = []

    def first_one_too_slow(fam, archs, *shape, runtime):
        assert runtime == "torch"
        timed.append(tuple(archs[1]))
        return [[5.0, 5.2, 4.9], [20.0, 21.0, 19.0] if len(timed) == 1 else [1.0, 1.1, 0.9]]  # source, candidate

    monkeypatch.setattr(extraction, "side_by_side", first_one_too_slow)
    result = extract(family="mlp", epsilon=0.5, theta="lr=3e-3", speed="measured", max_latency_ms=10.0,
                     output=str(tmp_path), progress=False)
    feasible, records = result.search.feasible, result.summary["side_by_side"]
    assert len(feasible) >= 2 and feasible == sorted(feasible, key=lambda c: (c.error, -c.W, c.arch))
    assert timed == [c.arch for c in feasible[:2]] == [tuple(r["arch"]) for r in records]
    assert [r["meets"] for r in records] == [False, True] and records[1]["speedup"] == 5.0
    assert records[1]["speedup_at_least"] <= 5.0 and records[1]["latency_ms_at_most"] >= 1.0
    assert result.constrained is feasible[1] and result.summary["target_met"]
    chosen = json.loads((tmp_path / "result.json").read_text())["chosen"]["arch"]
    assert tuple(chosen.values()) == feasible[1].arch

    # a resumed run keeps its timings (side_by_side.jsonl), so its choice stays what it was
    monkeypatch.setattr(extraction, "side_by_side", lambda fam, archs, *shape, runtime: [[5.0] * 3, [9.0, 11.0, 10.5]])
    again = extract(family="mlp", epsilon=0.5, theta="lr=3e-3", speed="measured", max_latency_ms=10.0,
                    output=str(tmp_path), progress=False, resume=True)
    assert again.constrained.arch == feasible[1].arch and again.summary["side_by_side"] == records
    missed = extract(family="mlp", epsilon=0.5, theta="lr=3e-3", speed="measured", max_latency_ms=10.0,
                     output=str(tmp_path), progress=False, overwrite=True)
    assert missed.constrained is None and not missed.summary["target_met"]
    assert missed.chosen is missed.w_optimum  # an unmet target leaves the W-optimum as the choice
    assert len(missed.summary["side_by_side"]) == len(missed.search.feasible)


def test_a_diverging_or_nan_arm_gets_zero_w_and_the_search_goes_on(tmp_path):
    toy = ToySurrogate(MLP)

    def sometimes_diverges(arch, theta, steps, seed):
        if arch[0] == 1:
            raise NonFiniteLoss("the loss became non-finite")
        if arch[0] == 2:
            return float("nan")  # an evaluation that returns NaN is a diverged arm too
        return toy(arch, theta, steps, seed)

    result = FPTAS(MLP, POINTS, sometimes_diverges, [{"lr": 3e-3}], epsilon=0.5).run(ResultsStore(tmp_path))
    assert result.chosen.arch[0] > 2
    assert all(c.W == 0 for c in result.candidates if c.arch[0] <= 2)
    assert ResultsStore(tmp_path).evaluations()  # infinite errors survive the strict-JSON round trip


def test_a_real_diverging_arm_in_the_engine_is_scored_inf(tmp_path):
    """The toy surrogate trains through the engine: a learning rate that blows up raises NonFiniteLoss there,
    and the search scores that arm ê = inf instead of stopping."""
    result = extract(family="mlp", epsilon=0.5, theta="lr=3e-3,1e12", output=str(tmp_path), progress=False)
    assert all(c.theta == 0 for c in result.search.candidates)  # the blown-up Θ entry never wins
    errors = [json.loads(line)["error"] for line in (tmp_path / "evaluations.jsonl").read_text().splitlines()]
    assert None in errors and "Infinity" not in (tmp_path / "result.json").read_text()


def test_the_approximation_check_is_undecided_when_every_finalist_diverges(tmp_path):
    toy = ToySurrogate(MLP)

    def diverges_when_long(arch, theta, steps, seed):
        if steps > 16:
            raise NonFiniteLoss("the loss became non-finite")
        return toy(arch, theta, steps, seed)

    search = FPTAS(MLP, POINTS, diverges_when_long, [{"lr": 3e-3}], epsilon=0.5)
    store = ResultsStore(tmp_path)
    check = search.recheck(store, search.run(store), factor=2)
    assert check["ratio"] is None and check["within_1_minus_epsilon"] is None


def test_fit_steps_gives_the_most_steps_whose_predicted_search_fits():
    """How `bort run` fits its search into a share of the budget: n(ε) when time allows, fewer when not, never
    fewer than the floor, and the prediction is the one `bort extract` makes for that n."""
    from bort.config import ExtractConfig
    from bort.search.extraction import fit_steps

    config = ExtractConfig(family="mlp", epsilon=0.2, theta="lr=3e-3")
    assert fit_steps(MLP, config, seconds=3600)[0] == steps_for_epsilon(0.2)
    assert fit_steps(MLP, config, seconds=0)[0] == 4
    roomy, predicted = fit_steps(MLP, config, seconds=3600)
    tight, within = fit_steps(MLP, config, seconds=predicted / 20)
    assert 4 <= tight < roomy and (within <= predicted / 20 or tight == 4)
