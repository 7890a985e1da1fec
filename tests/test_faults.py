"""The fault matrix: bad input, crashes and hostile files, tried as a user would, through the CLI.

Each row is a fault that was found once; the test keeps it fixed. Nothing is lost, nothing is executed:
bad input gets one line and exit code 2 before any work, a killed run resumes exactly, and loading a run
folder never runs code.
"""

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
from tests.test_tasks import tiny_model  # noqa: F401 - the shared tiny model fixture
from transformers import AutoModelForSequenceClassification

import bort
from bort.cli import main


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Runs compared step by step use one thread, as the killed subprocess does (sums differ across counts)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def one_line(capsys, *argv: str) -> str:
    code, text = run(capsys, *argv)
    assert code == 2 and text.strip().count("\n") == 0 and "Traceback" not in text, text
    return text


def finetune_args(model: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return ["finetune", "--model", str(model), "--task", "stsb", "--data-dir", str(data), "--output", str(output),
            "--max-steps", "30", "--batch-size", "4", "--max-seq-len", "32", "--max-train-samples", "64",
            "--save-every", "4", "--log-every", "1", "--no-latency", "--quiet", *extra]


def test_finetune_killed_with_a_torn_log_line_resumes_to_the_same_weights(tmp_path, shared_data, tiny_model):  # noqa: F811
    reference = tmp_path / "reference"
    assert main(finetune_args(tiny_model, shared_data, reference)) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bort.cli", *finetune_args(tiny_model, shared_data, out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "plain" / "seed-0" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        steps = [r["step"] for r in bort.io.read_jsonl(log)] if log.is_file() else []
        if steps and max(steps) >= 10:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    with open(log, "a") as f:  # what a SIGKILL mid-write leaves: half a line
        f.write('{"kind": "train", "step": 77, "lo')
    assert main(finetune_args(tiny_model, shared_data, out)) == 2  # a started run is not silently redone
    assert main(finetune_args(tiny_model, shared_data, out, "--resume")) == 0
    want = AutoModelForSequenceClassification.from_pretrained(reference).state_dict()
    got = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    assert all(torch.allclose(want[k], got[k], atol=1e-6) for k in want)
    steps = [r["step"] for r in bort.io.read_jsonl(log)]
    assert steps == list(range(1, 31))  # one uninterrupted-looking log, the torn line gone


def test_finetune_with_a_diverging_learning_rate_stops_with_one_line(tmp_path, shared_data, capsys,
                                                                   tiny_model):  # noqa: F811
    out = tmp_path / "nan"
    text = one_line(capsys, *finetune_args(tiny_model, shared_data, out, "--lr", "1e6"))
    assert "non-finite" in text and "lower --lr" in text
    assert not (out / "metrics.json").exists() and not (out / "plain" / "seed-0" / "model.safetensors").exists()


@pytest.mark.parametrize("flag,value,message", [
    ("--lr", "-1", "--lr must be above 0"), ("--lr", "nan", "--lr must be a finite number"),
    ("--max-steps", "0", "--max-steps must be at least 1"), ("--warmup", "-0.5", "--warmup must be at least 0"),
])
def test_invalid_numbers_are_one_line_before_any_work(tmp_path, capsys, flag, value, message):
    assert message in one_line(capsys, "pretrain", "--arch", "1,2,32,64", "--output", str(tmp_path / "x"), flag,
                               value)
    assert not (tmp_path / "x").exists()


def test_extract_theta_in_the_old_list_form_says_how_to_write_it(tmp_path, capsys):
    text = one_line(capsys, "extract", "--family", "mlp", "--theta", "lr=1e-3;lr=3e-3", "--output", str(tmp_path))
    assert "lr is given twice; list its values once: lr=V1,V2" in text


def test_a_folder_bort_did_not_write_is_never_overwritten(tmp_path, capsys, shared_data, tiny_model):  # noqa: F811
    thesis = tmp_path / "thesis"
    (thesis / "chapters").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("years of work")
    for extra in ((), ("--overwrite",), ("--resume",)):
        text = one_line(capsys, *finetune_args(tiny_model, shared_data, thesis, *extra))
        assert "already holds files" in text or "did not write" in text
    assert (thesis / "thesis.tex").read_text() == "years of work" and (thesis / "chapters").is_dir()
    text = one_line(capsys, *finetune_args(tiny_model, shared_data, tiny_model, "--overwrite"))
    assert "did not write" in text and (tiny_model / "config.json").is_file()


def test_checkpoints_hold_nothing_that_loading_can_run(tmp_path, shared_data, tiny_model):  # noqa: F811
    """A checkpoint is safetensors and JSON; a pickle dropped into a run folder is never opened."""
    out = tmp_path / "run"
    args = finetune_args(tiny_model, shared_data, out)
    args[args.index("--max-steps") + 1] = "8"
    assert main(args) == 0
    seed = out / "plain" / "seed-0"
    (seed / "state.pt").write_bytes(b"\x80\x04crafted pickle")  # the old format's file name
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save(Payload(), seed / "checkpoint.pt")
    assert main([*args, "--resume"]) == 0
    assert not marker.exists()
    assert sorted(p.name for p in out.rglob("*") if p.suffix in (".pt", ".bin", ".pkl")) == [
        "checkpoint.pt", "state.pt"]  # bort itself wrote no pickle
    assert json.loads((out / "metrics.json").read_text())["best_seed"] == 0


def test_resume_never_writes_into_an_input_or_another_commands_run(tmp_path, capsys, shared_data,
                                                                   tiny_model):  # noqa: F811
    run_dir = tmp_path / "run"
    args = finetune_args(tiny_model, shared_data, run_dir)
    args[args.index("--max-steps") + 1] = "2"
    assert main(args) == 0
    capsys.readouterr()
    weights = (run_dir / "model.safetensors").read_bytes()
    text = one_line(capsys, *finetune_args(run_dir, shared_data, run_dir, "--resume"))  # its own input
    assert "is or holds" in text and (run_dir / "model.safetensors").read_bytes() == weights
    text = one_line(capsys, "pretrain", "--arch", "1,2,32,64", "--output", str(run_dir), "--resume")
    assert "holds a `bort finetune` run, not a `bort pretrain` one" in text


def test_bad_input_leaves_no_run_folder_behind(tmp_path, capsys, shared_data, tiny_model):  # noqa: F811
    out = tmp_path / "x"
    assert "does not exist" in one_line(capsys, "extract", "--corpus", str(tmp_path / "missing.txt"), "--output",
                                        str(out), "--quiet")
    text = one_line(capsys, *finetune_args(tiny_model, shared_data, out, "--max-seq-len", "512"))
    assert "exceeds the 128 positions" in text
    assert "--rounds only apply with --agora" in one_line(capsys, *finetune_args(tiny_model, shared_data, out,
                                                                                 "--rounds", "2"))
    assert not out.exists()


def test_config_files_are_typed_like_flags(tmp_path, capsys):
    from bort.cli import options, parser

    settings = tmp_path / "s.yaml"
    settings.write_text("corpus: a.txt\nlr: 5e-4\n")  # a scalar for a list; YAML reads 5e-4 as text
    got = options(parser().parse_args(["pretrain", "--arch", "1,2,32,64", "--output", "o", "--config",
                                       str(settings)]))
    assert got.corpus == ["a.txt"] and got.lr == 5e-4
    settings.write_text("seeds: 3\n")
    assert options(parser().parse_args(["finetune", "--task", "rte", "--output", "o", "--config",
                                        str(settings)])).seeds == [3]
    for line, message in (("max_steps: null", "--max-steps needs a value"),
                          ("batch_size: 2.5", "--batch-size must be a finite whole number"),
                          ("mlm_weight: 0\nhidden_weight: 0", "every loss weight this teacher uses is 0")):
        settings.write_text(line + "\n")
        assert message in one_line(capsys, "pretrain", "--arch", "1,2,32,64", "--output", str(tmp_path / "o"),
                                   "--config", str(settings))
    assert not (tmp_path / "o").exists()


def test_a_run_resumed_at_its_end_keeps_its_figures(tmp_path, wiki_text):
    out = tmp_path / "run"
    common = dict(corpus=[str(wiki_text)], max_steps=3, batch_size=2, max_seq_len=16, eval_sequences=4,
                  max_sequences=60, eval_every=3, save_every=0, measure_latency=False, progress=False)
    first = bort.pretrain("1,2,32,64", out, **common)
    again = bort.pretrain("1,2,32,64", out, resume=True, **common)
    assert again.eval == first.eval and again.train == first.train and again.eval


def test_two_processes_measure_latency_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master_port",
                          str(29600 + os.getpid() % 1000), "-m", "bort.cli", "extract", "--family", "mlp",
                          "--speed", "measured", "--steps", "8", "--theta", "lr=3e-3", "--quiet", "--output",
                          str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((tmp_path / "two" / "result.json").read_text())["chosen"]["latency_ms"] > 0
