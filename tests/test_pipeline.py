"""`bort run` end to end on a tiny source and a tiny budget: every stage, a kill and a resume, stage skipping, and a
changed option re-running only the stages it affects."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

import bort
from bort.cli import main
from bort.config import PipelineConfig
from bort.tasks import finetune as ft
from bort.tasks.registry import unlabelled_text


def run_args(model: Path, data: Path, corpus: Path, output: Path, *extra: str) -> list[str]:
    return ["run", "--source", str(model), "--task", "RTE", "--data-dir", str(data), "--output", str(output),
            "--speedup", "1.2", "--speed", "ops", "--budget-minutes", "0.1", "--max-train-samples", "32",
            "--max-seq-len", "32", "--corpus", str(corpus), "--quiet", *extra]


def stage_lines(text: str) -> dict[str, str]:
    """How each stage began: 'starting', 'continuing' or 'done' (earlier, skipped)."""
    return {line.split()[2].rstrip(":"): line.split(":", 1)[1].strip().split()[0] for line in text.splitlines()
            if line.startswith("stage ") and " finished in " not in line}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, shared_data, tiny_model, wiki_text) -> Path:
    out = tmp_path_factory.mktemp("run") / "rte"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "bort.cli", *run_args(tiny_model, shared_data, wiki_text, out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_every_stage_writes_what_a_user_deploys_and_reads(finished):
    summary = json.loads((finished / "summary.json").read_text())
    assert set(json.loads((finished / "stages.json").read_text())) == {"teacher", "extract", "pretrain", "student",
                                                                      "onnx", "report"}
    student = AutoModelForSequenceClassification.from_pretrained(finished / "student")
    assert student.config.num_hidden_layers == summary["architecture"]["D"] and "accuracy" in summary["student"]["dev"]
    assert summary["speedup"]["torch"] > 0 and summary["onnx"]["kept"].endswith(".onnx") and summary["onnx"]["why"]
    assert (finished / "student" / "README.md").is_file()  # the model card
    html = (finished / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<table>" in html and "Official dev split" in html
    assert "| accuracy |" in (finished / "report.md").read_text() and "constant guess" in html
    assert set(summary["majority_dev"]) == set(summary["student"]["dev"])
    plan = json.loads((finished / "plan.json").read_text())
    assert_split_whole(plan["minutes"], 0.1)
    arch = ",".join(map(str, summary["architecture"].values()))  # each training stage timed its own steps once
    assert set(plan["probed_step_seconds"]) == {f"pretrain {arch}", f"student {arch}"}
    assert all(v > 0 for v in plan["probed_step_seconds"].values()) and plan["step_seconds"] > 0
    assert not list(finished.glob(".probe-*"))  # and left nothing behind


def test_rerunning_skips_finished_stages_and_a_changed_option_reruns_from_its_stage(finished, shared_data,
                                                                                   tiny_model, wiki_text, capsys):
    args = run_args(tiny_model, shared_data, wiki_text, finished)
    assert main([*args, "--resume"]) == 0
    assert set(stage_lines(capsys.readouterr().err).values()) == {"done"}
    assert main([*args, "--resume", "--seeds", "0", "1"]) == 0  # the seeds change the student, not what comes before
    err = capsys.readouterr().err
    lines = stage_lines(err)
    assert "student: finished earlier with other options (--seeds [0, 1] now, [0] then); it runs again" in err
    assert [s for s, what in lines.items() if what == "done"] == ["teacher", "extract", "pretrain"]
    summary = json.loads((finished / "summary.json").read_text())
    best = finished / "student" / "distilled" / f"seed-{summary['student']['best_seed']}" / "metrics.json"
    assert summary["student"]["dev"] == json.loads(best.read_text())["metrics"]  # the deployed seed's, not the mean
    assert "seed-1" in {p.name for p in (finished / "student" / "distilled").iterdir()}


def test_a_stage_rerun_after_an_interrupted_change_reruns_every_stage_after_it(finished, shared_data, tiny_model,
                                                                               wiki_text, capsys):
    """A run with another --speedup was killed in its search: going back to the first options re-runs the search,
    and so everything made from it, never the old pre-training on top of a new choice."""
    records = json.loads((finished / "stages.json").read_text())
    records["extract"] = {**records["extract"], "key": "another run's", "done": False}
    (finished / "stages.json").write_text(json.dumps(records))
    assert main(run_args(tiny_model, shared_data, wiki_text, finished)) == 0  # no --resume: the same command goes on
    lines = stage_lines(capsys.readouterr().err)
    assert lines == {"teacher": "done", "extract": "starting", "pretrain": "starting", "student": "starting",
                     "onnx": "starting", "report": "starting"}


def test_the_report_says_when_the_student_is_no_better_than_a_constant_guess(finished):
    from bort import pipeline

    summary = json.loads((finished / "summary.json").read_text())
    student = summary["student"]["dev"]["accuracy"]
    summary["majority_dev"] = {"accuracy": student - 0.01}
    assert "it has not learned" not in pipeline._markdown(pipeline._blocks(summary))
    summary["majority_dev"] = {"accuracy": student}
    text = pipeline._markdown(pipeline._blocks(summary))
    assert f"| {100 * student:.1f} | {100 * student:.1f} |" in text
    assert "no better than the constant guess on accuracy, so it has not learned the task" in text

def test_the_report_shows_how_the_speed_target_was_checked(finished):
    """With a measured target, the report lists the finalists timed side by side with the source (here the run
    counted operations, so there is nothing to list, and the section is left out)."""
    from bort import pipeline

    summary = json.loads((finished / "summary.json").read_text())
    assert summary["target_check"] == [] and "checked side by side" not in (finished / "report.md").read_text()
    summary["target_check"] = [{"arch": [2, 12, 384, 768], "speedup": 4.0, "speedup_at_least": 3.86, "meets": False},
                               {"arch": [2, 12, 384, 384], "speedup": 4.88, "speedup_at_least": 4.82, "meets": True}]
    text = pipeline._markdown(pipeline._blocks(summary))
    assert "| ⟨2, 12, 384, 768⟩ | 4.00x | 3.86x | no |" in text
    assert "| ⟨2, 12, 384, 384⟩ | 4.88x | 4.82x | yes |" in text
    assert "(random weights, PyTorch eager)" in text
    summary["latency_runtime"] = "onnx-int8"  # --latency-runtime onnx-int8 reaches the search and the report
    assert "(random weights, ONNX Runtime int8)" in pipeline._markdown(pipeline._blocks(summary))
    config = PipelineConfig(task="RTE", output="x", latency_runtime="onnx-int8")
    assert pipeline._extract_config(config, "src", output="x").latency_runtime == "onnx-int8"
    plan = {"search_steps": 8, "minutes": {"pretrain": 1, "student": 1}}  # a search timed in another runtime reruns
    assert pipeline._stage_options("extract", config, plan, "src") != pipeline._stage_options(
        "extract", PipelineConfig(task="RTE", output="x"), plan, "src")


def assert_split_whole(minutes: dict[str, float], budget: float) -> None:
    """The budget is split, whole, across the stages, unless the teacher's one step and the search's least steps need
    more than it: then pre-training and the student get nothing, never less."""
    assert all(v >= 0 for v in minutes.values())
    assert abs(sum(minutes.values()) - budget) < 1e-3 or minutes["pretrain"] == minutes["student"] == 0


def test_a_given_teacher_skips_its_stage_and_its_share(finished, tmp_path, shared_data, tiny_model, wiki_text):
    """Without --corpus, too: the search and the pre-training read the task's train text and Python's documentation,
    written into the run's corpus/ folder."""
    out = tmp_path / "given"
    args = run_args(tiny_model, shared_data, wiki_text, out)
    del args[args.index("--corpus"):args.index("--corpus") + 2]
    assert main([*args, "--teacher", str(finished / "teacher")]) == 0
    corpus = sorted((out / "corpus").iterdir())
    assert [p.name.split("-")[:2] for p in corpus] == [["python", "docs"], ["train", "text"]]
    rte = ft.load_data(bort.tasks.get_task("RTE"), shared_data, 32).train  # --max-train-samples 32
    assert corpus[1].read_text() == unlabelled_text(rte)
    records = json.loads((out / "stages.json").read_text())
    assert records["pretrain"]["options"]["corpus"] == records["extract"]["options"]["corpus"] == [
        str(p.resolve()) for p in corpus[::-1]]
    assert f"packed sequences of `{corpus[1].name}`, `{corpus[0].name}`." in (out / "report.md").read_text()
    plan, summary = (json.loads((out / name).read_text()) for name in ("plan.json", "summary.json"))
    assert "teacher" not in plan["minutes"]
    assert_split_whole(plan["minutes"], 0.1)
    assert summary["teacher"] == {"folder": str(finished / "teacher"), "given": True} and not (out / "teacher").exists()
    card = (out / "student" / "README.md").read_text()
    assert "Speed, side by side" in card and "AutoModelForSequenceClassification" in card  # the run's figures


def test_killed_in_a_stage_resumes_that_stage_to_the_same_weights(tmp_path, shared_data, tiny_model, wiki_text):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = run_args(tiny_model, shared_data, wiki_text, out, "--budget-minutes", "0.5")
    proc = subprocess.Popen([sys.executable, "-m", "bort.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = out / "pretrain" / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and any(r.get("step", 0) >= 2 and r.get("kind") == "train" for r in bort.io.read_jsonl(log)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = subprocess.run([sys.executable, "-m", "bort.cli", *args], env=env, capture_output=True, text=True,
                          timeout=900)  # the same command again, without --resume: it continues
    assert done.returncode == 0, done.stderr[-3000:]
    lines = stage_lines(done.stderr)
    assert lines["teacher"] == lines["extract"] == "done" and lines["pretrain"] == "continuing"
    record = json.loads((out / "stages.json").read_text())["pretrain"]
    steps = [r["step"] for r in bort.io.read_jsonl(log) if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == record["result"]["steps"]
    reference = tmp_path / "reference"  # the same pre-training, uninterrupted
    torch.set_num_threads(1)
    bort.pretrain(str(out / "extract" / "chosen"), reference, teacher=str(tiny_model), init="source",
                  corpus=[str(wiki_text)], max_steps=record["result"]["steps"], batch_size=16, max_seq_len=128,
                  eval_every=max(1, record["result"]["steps"] // 10), progress=False)
    want = AutoModelForMaskedLM.from_pretrained(reference).state_dict()
    got = AutoModelForMaskedLM.from_pretrained(out / "pretrain").state_dict()
    assert all(torch.allclose(want[k], got[k], atol=1e-6) for k in want)


def test_two_processes_run_every_stage_and_resume(tmp_path, shared_data, tiny_model, wiki_text):
    """torchrun with 2 CPU processes (gloo): the training stages run on both, export and timing on process 0 alone
    (its collectives must not wait for the other), and a rerun skips every stage."""
    out, env = tmp_path / "two", {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master_port", "29733",
           "-m", "bort.cli", *run_args(tiny_model, shared_data, wiki_text, out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "pretrain" / "pretrain.json").read_text())["processes"] == 2
    assert AutoModelForSequenceClassification.from_pretrained(out / "student").config.num_labels == 2
    assert (out / "report.html").is_file() and json.loads((out / "summary.json").read_text())["speedup"]["torch"] > 0
    again = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and set(stage_lines(again.stderr).values()) == {"done"}, again.stderr[-3000:]


def test_bad_input_is_one_line_before_any_stage(tmp_path, shared_data, tiny_model, wiki_text, capsys):
    for extra, message in ((("--speedup", "1000"), "no candidate in the space meets --speedup 1000"),
                           (("--task", "nope"), "unknown task 'nope'"),
                           (("--teacher", str(tiny_model)), "not a fine-tuned classifier"),
                           (("--source", "bert-base"), "architecture preset without weights"),
                           (("--corpus", str(tmp_path / "missing.txt")), "missing.txt"),
                           (("--agora", "--max-train-samples", "12"), "too small"),
                           (("--data-dir", str(tmp_path)), "RTE")):
        code = main([*run_args(tiny_model, shared_data, wiki_text, tmp_path / "x"), *extra])
        text = capsys.readouterr().err
        assert code == 2 and message in text and text.strip().count("\n") == 0, text
    assert not (tmp_path / "x").exists()


def test_the_default_corpus_is_named_by_its_text_and_never_rewritten(tmp_path, shared_data):
    """Another train split is another file (so the stages that read it re-run); the same one is the same file, left
    untouched (so its token cache stays valid); a given --corpus is used as given."""
    from bort import pipeline

    task = bort.tasks.get_task("RTE")
    config = PipelineConfig(task="RTE", output=str(tmp_path))
    first = pipeline._with_corpus(config, tmp_path, ft.load_data(task, shared_data, 32)).corpus
    written = [os.stat(p).st_mtime_ns for p in first]
    time.sleep(0.01)
    assert pipeline._with_corpus(config, tmp_path, ft.load_data(task, shared_data, 32)).corpus == first
    assert [os.stat(p).st_mtime_ns for p in first] == written
    other = pipeline._with_corpus(config, tmp_path, ft.load_data(task, shared_data, 64)).corpus
    assert other[0] != first[0] and other[1] == first[1]  # the documentation is the same text
    given = PipelineConfig(task="RTE", output=str(tmp_path), corpus=["my.txt"])
    assert pipeline._with_corpus(given, tmp_path, ft.load_data(task, shared_data, 32)) is given
