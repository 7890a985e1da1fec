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
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

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


def finished_finetune(tmp_path: Path, capsys, shared_data: Path, model: Path) -> tuple[Path, list[str]]:
    """A finished 2-step fine-tuning run: its folder and the arguments that made it."""
    run_dir = tmp_path / "run"
    args = finetune_args(model, shared_data, run_dir)
    args[args.index("--max-steps") + 1] = "2"
    assert main(args) == 0
    capsys.readouterr()
    return run_dir, args


def finetune_args(model: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return ["finetune", "--model", str(model), "--task", "stsb", "--data-dir", str(data), "--output", str(output),
            "--max-steps", "30", "--batch-size", "4", "--max-seq-len", "32", "--max-train-samples", "64",
            "--save-every", "4", "--log-every", "1", "--no-latency", "--quiet", *extra]


def test_finetune_killed_with_a_torn_log_line_resumes_to_the_same_weights(tmp_path, shared_data, tiny_model):
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
                                                                   tiny_model):
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


def test_a_folder_bort_did_not_write_is_never_overwritten(tmp_path, capsys, shared_data, tiny_model):
    thesis = tmp_path / "thesis"
    (thesis / "chapters").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("years of work")
    for extra in ((), ("--overwrite",), ("--resume",)):
        text = one_line(capsys, *finetune_args(tiny_model, shared_data, thesis, *extra))
        assert "already holds files" in text or "did not write" in text
    assert (thesis / "thesis.tex").read_text() == "years of work" and (thesis / "chapters").is_dir()
    text = one_line(capsys, *finetune_args(tiny_model, shared_data, tiny_model, "--overwrite"))
    assert "did not write" in text and (tiny_model / "config.json").is_file()


def test_checkpoints_hold_nothing_that_loading_can_run(tmp_path, shared_data, tiny_model):
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
                                                                   tiny_model):
    run_dir, args = finished_finetune(tmp_path, capsys, shared_data, tiny_model)
    weights = (run_dir / "model.safetensors").read_bytes()
    text = one_line(capsys, *finetune_args(run_dir, shared_data, run_dir, "--resume"))  # its own input
    assert "is or holds" in text and (run_dir / "model.safetensors").read_bytes() == weights
    text = one_line(capsys, "pretrain", "--arch", "1,2,32,64", "--output", str(run_dir), "--resume")
    assert "holds a `bort finetune` run, not a `bort pretrain` one" in text


def test_bad_input_leaves_no_run_folder_behind(tmp_path, capsys, shared_data, tiny_model):
    out = tmp_path / "x"
    assert "does not exist" in one_line(capsys, "extract", "--corpus", str(tmp_path / "missing.txt"), "--output",
                                        str(out), "--quiet")
    text = one_line(capsys, *finetune_args(tiny_model, shared_data, out, "--max-seq-len", "512"))
    assert "exceeds the 128 positions" in text
    assert "--rounds only apply with --agora" in one_line(capsys, *finetune_args(tiny_model, shared_data, out,
                                                                                 "--rounds", "2"))
    assert not out.exists()


def test_hidden_state_distillation_from_a_teacher_with_another_vocabulary_is_one_line(tmp_path, capsys,
                                                                                       shared_data, tiny_model):
    """Its states are matched token by token: a teacher that reads other ids is refused before any work, and the
    fix the line names (--hidden-weight 0) runs."""
    from bort.io import load_tokenizer

    teacher = tmp_path / "teacher"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    model.config.architectures = ["BertForSequenceClassification"]
    model.save_pretrained(teacher)
    tokenizer = load_tokenizer(tiny_model)
    tokenizer.add_tokens(["bortword"])
    tokenizer.save_pretrained(teacher)
    capsys.readouterr()
    out = tmp_path / "run"
    args = [*finetune_args(tiny_model, shared_data, out, "--teacher", str(teacher)), "--max-steps", "2"]
    args[args.index("stsb")] = "rte"
    text = one_line(capsys, *args, "--hidden-weight", "1")
    assert "share the student's vocabulary" in text and "--hidden-weight 0" in text and not out.exists()
    assert main([*args, "--hidden-weight", "0"]) == 0


def test_augmenting_with_an_infill_model_without_a_masked_lm_head_is_one_line_before_the_teacher(
        tmp_path, capsys, shared_data, tiny_model):
    """--augment's transform is built before any work: a classifier as --infill-model is refused before
    --teacher-from trains the teacher, and the fix the line names (an ...ForMaskedLM model) runs."""
    classifier = tmp_path / "classifier"
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).save_pretrained(classifier)
    out = tmp_path / "run"
    args = [*finetune_args(tiny_model, shared_data, out, "--teacher-from", str(tiny_model), "--augment", "0.5",
                           "--transform", "infill", "--band", "0", "0.9999"), "--max-steps", "2"]
    args[args.index("stsb")] = "rte"
    capsys.readouterr()
    assert "has no masked-LM head; pass an ...ForMaskedLM model" in one_line(capsys, *args, "--infill-model",
                                                                             str(classifier))
    assert not out.exists()
    assert main([*args, "--infill-model", str(tiny_model)]) == 0
    assert (out / "augmented.jsonl").read_text().count("\n") == 32  # 0.5 x 64 train points


def test_a_run_without_model_is_continued_by_one_naming_the_default(tmp_path, capsys, monkeypatch, shared_data,
                                                                     tiny_model):
    """`bort finetune` without --model and `bort.finetune(default_source(), ...)` are the same run, in either
    order and whichever the finished run recorded (runs before 2026-12-03 recorded the path): the second loads the
    first's finished model instead of refusing it for a changed --model."""
    monkeypatch.setattr("bort.io.default_source", lambda: str(tiny_model))
    for recorded, second in ((None, ["--model", str(tiny_model)]), (str(tiny_model), [])):
        out = tmp_path / f"run-{len(second)}"
        args = finetune_args(tiny_model, shared_data, out)
        del args[args.index("--model"):args.index("--model") + 2]
        args[args.index("--max-steps") + 1] = "2"
        assert main(args) == 0
        done = out / "plain" / "seed-0" / "train_state.json"
        state = json.loads(done.read_text())
        done.write_text(json.dumps({**state, "fingerprint": {**state["fingerprint"], "model": recorded}}))
        weights = (out / "plain" / "seed-0" / "model.safetensors").stat().st_mtime_ns
        assert main([*args, *second, "--resume"]) == 0
        assert (out / "plain" / "seed-0" / "model.safetensors").stat().st_mtime_ns == weights


def test_a_run_resumed_with_its_inputs_spelled_another_way_keeps_its_work(tmp_path, capsys, monkeypatch,
                                                                            shared_data, tiny_model):
    """`--data-dir ../shared/data` and `--data-dir /abs/shared/data` are one folder: resuming with the other
    spelling (or from another working folder) once refused a finished fine-tuning run as changed, and made
    `bort run` train every stage again, its teacher first."""
    out, args = finished_finetune(tmp_path, capsys, shared_data, tiny_model)
    weights = (out / "plain" / "seed-0" / "model.safetensors").stat().st_mtime_ns
    monkeypatch.chdir(tmp_path)
    relative = [{str(shared_data): os.path.relpath(shared_data), str(tiny_model): os.path.relpath(tiny_model),
                 str(out): "run"}.get(a, a) for a in args]
    assert relative != args and main([*relative, "--resume"]) == 0
    assert (out / "plain" / "seed-0" / "model.safetensors").stat().st_mtime_ns == weights
    monkeypatch.chdir(shared_data)  # and from a folder where the same inputs are ./ paths
    dotted = [{str(shared_data): "."}.get(a, a) for a in args]
    assert main([*dotted, "--resume"]) == 0
    assert (out / "plain" / "seed-0" / "model.safetensors").stat().st_mtime_ns == weights
    # `bort run` keys its stages by the same options: hub names and presets stay as given
    from bort.config import PipelineConfig, make
    run = make(PipelineConfig, task="stsb", data_dir=".", source="bert-base-uncased", output="o")
    assert (run.data_dir, run.source) == (os.path.abspath(shared_data), "bert-base-uncased")


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


# -- the rows of the fault matrix that need no training: each is one line and exit code 2, before any work -------------

@pytest.fixture(scope="module")
def damaged_models(tmp_path_factory, tiny_model) -> dict[str, Path]:
    """The tiny model with its weights cut short, and with an empty weights file."""
    folders = {}
    for name, keep in (("truncated", 1000), ("empty", 0)):
        folder = tmp_path_factory.mktemp(name)
        for file in tiny_model.iterdir():
            (folder / file.name).write_bytes(file.read_bytes()[:keep] if file.suffix == ".safetensors"
                                             else file.read_bytes())
        folders[name] = folder
    return folders


@pytest.mark.parametrize("damage", ["truncated", "empty"])
@pytest.mark.parametrize("command", ["finetune", "pretrain", "extract", "bench", "export"])
def test_damaged_weights_are_one_line_in_every_command(tmp_path, capsys, shared_data, damaged_models, damage,
                                                       command, wiki_text):
    model, out = damaged_models[damage], tmp_path / "out"
    argv = {"finetune": finetune_args(model, shared_data, out),
            "pretrain": ["pretrain", "--arch", "1,2,32,64", "--teacher", str(model), "--corpus", str(wiki_text),
                         "--output", str(out)],
            "extract": ["extract", "--source", str(model), "--corpus", str(wiki_text), "--output", str(out)],
            "bench": ["bench", "--models", str(model)],
            "export": ["export", "--model", str(model), "--output", str(out)]}[command]
    text = one_line(capsys, *argv)
    assert "model.safetensors is damaged or incomplete" in text and "save or download the model again" in text
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["extract", "--family", "mlp", "--theta", "lr=-1"], "--lr must be above 0, not -1"),
    (["extract", "--family", "mlp", "--theta", "lr=nan"], "--lr must be a finite number"),
    (["extract", "--family", "mlp", "--steps", "0"], "--steps must be at least 1"),
    (["extract", "--family", "mlp", "--speedup", "1000"], "no candidate in the space meets --speedup 1000 (the"),
    (["extract", "--latency-runtime", "onnx-int8"], "--speed ops counts operations; add --speed measured"),
    (["extract", "--family", "mlp", "--speed", "measured", "--latency-runtime", "onnx"],
     "not the 'mlp' family; use --latency-runtime torch"),
    (["run", "--task", "mrpc", "--speed", "ops", "--latency-runtime", "onnx"], "add --speed measured"),
    (["finetune", "--task", "rte", "--lr", "-1"], "--lr must be above 0"),
    (["finetune", "--task", "rte", "--lr", "nan"], "--lr must be a finite number"),
    (["finetune", "--task", "rte", "--max-steps", "0"], "--max-steps must be at least 1"),
    (["finetune", "--task", "mine", "--train", "train.csv"], "--train needs --dev"),
    (["finetune", "--task", "rte", "--augment", "2"], "--augment needs a teacher to label the new points"),
    (["finetune", "--task", "rte", "--agora", "--augment", "2"], "--augment is for task distillation without --agora"),
    (["finetune", "--task", "rte", "--band", "0.5", "0.9"], "--band only apply with --augment or --agora"),
    (["finetune", "--task", "rte", "--agora", "--transform", "infill"], "--transform infill needs --infill-model"),
    (["pretrain", "--arch", "1,2,32,64", "--mask-prob", "1.5"], "--mask-prob must be at most 1"),
    (["pretrain", "--arch", "100000,12,768,3072"], "GiB to train, more than this machine's"),
    (["bench", "--models", "bert-base", "--threads", "-3"], "--threads must be at least 1"),
    (["bench", "--models", "bert-base", "--threads", "0"], "--threads must be at least 1"),
    (["bench", "--models", "bert-base", "--plot", "latency.txt"], "name a .png, .pdf or .svg file"),
    pytest.param(["bench", "--models", "bert-base", "--device", "cuda"], "--device cuda: PyTorch sees no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")),
    (["cost", "--arch", "100000,12,768,3072", "--measure"], "GiB to run, more than this machine's"),
    (["export", "--model", "bert-base", "--opset", "5"], "--opset must be at least 13"),
    (["export", "--model", "bert-base", "--opset", "13", "--no-fuse"], "pass --opset 18"),
])
def test_invalid_numbers_and_names_in_every_command(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    needs_output = argv[0] in ("extract", "finetune", "pretrain", "export", "run")
    assert message in one_line(capsys, *argv, *(["--output", str(out)] if needs_output else []))
    assert not out.exists()


def test_outputs_are_checked_before_the_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for argv in (["bench", "--models", "bert-base", "--json", str(blocker / "x.json")],
                 ["bench", "--models", "bert-base", "--plot", str(blocker / "x.png")],
                 ["cost", "--arch", "1,2,32,64", "--json", str(blocker / "x.json")]):
        started = time.perf_counter()
        one_line(capsys, *argv)
        assert time.perf_counter() - started < 5  # refused before timing BERT-base, not after


def test_a_file_named_for_the_report_is_never_replaced_unasked(tmp_path, capsys):
    existing = tmp_path / "notes.json"
    existing.write_text("the user's notes")
    for argv in (["cost", "--arch", "1,2,32,64", "--json", str(existing)],
                 ["bench", "--models", "bert-base", "--json", str(existing)],
                 ["bench", "--models", "bert-base", "--plot", str(tmp_path / "notes.png")]):
        (tmp_path / "notes.png").write_text("the user's plot")
        assert "pass --overwrite to replace it" in one_line(capsys, *argv)
    assert existing.read_text() == "the user's notes" and (tmp_path / "notes.png").read_text() == "the user's plot"
    code, _ = run(capsys, "cost", "--arch", "1,2,32,64", "--json", str(existing), "--overwrite")  # the fix works
    assert code == 0 and json.loads(existing.read_text())["params"] > 0


def test_a_bench_label_cannot_reach_outside_its_scratch_folder(tmp_path, capsys, monkeypatch, tiny_model):
    import tempfile

    scratch_parent = tmp_path / "tmp"
    scratch_parent.mkdir()
    (scratch_parent / "keep.txt").write_text("not bort's")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_parent))  # where `bort bench` makes its scratch folder
    code, text = run(capsys, "bench", "--models", f"..={tiny_model}", "--runtime", "onnx", "--repeats", "1",
                     "--seq-len", "8")
    assert code == 0, text
    assert (scratch_parent / "keep.txt").read_text() == "not bort's"


def test_binary_corpus_files_are_refused_or_skipped(tmp_path, capsys, tiny_model, wiki_text):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "tool").write_bytes(Path(sys.executable).read_bytes()[:20000])  # an executable, no extension
    (folder / "notes.txt").write_text(wiki_text.read_text()[:20000])
    common = ["pretrain", "--arch", "1,2,32,64", "--teacher", str(tiny_model), "--max-steps", "1", "--batch-size",
              "2", "--max-seq-len", "16", "--eval-sequences", "2", "--no-latency", "--quiet"]
    text = one_line(capsys, *common, "--corpus", str(folder / "tool"), "--output", str(tmp_path / "a"))
    assert "is not text (an executable" in text and not (tmp_path / "a").exists()
    code, text = run(capsys, *common, "--corpus", str(folder), "--output", str(tmp_path / "b"))
    assert code == 0 and "skipped 1 binary file(s), e.g. tool" in text
    assert json.loads((tmp_path / "b" / "pretrain.json").read_text())["corpus"] == [str(folder)]


def test_pretrain_never_replaces_a_model_or_a_finished_run(tmp_path, capsys, tiny_model, wiki_text):
    common = ["pretrain", "--arch", "1,2,32,64", "--teacher", str(tiny_model), "--corpus", str(wiki_text),
              "--max-steps", "2", "--batch-size", "2", "--max-seq-len", "16", "--eval-sequences", "2",
              "--save-every", "0", "--no-latency", "--quiet", "--max-sequences", "40"]
    copy = tmp_path / "teacher-copy"
    copy.mkdir()
    for file in tiny_model.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    weights = (copy / "model.safetensors").read_bytes()
    for extra in ((), ("--overwrite",), ("--resume",)):
        text = one_line(capsys, *common, "--output", str(copy), *extra)
        assert "already holds files; choose an empty or new folder" in text or "did not write" in text
    assert (copy / "model.safetensors").read_bytes() == weights
    done = tmp_path / "done"
    assert main([*common, "--output", str(done)]) == 0
    capsys.readouterr()
    assert "pass --resume to continue that run or --overwrite" in one_line(capsys, *common, "--output", str(done))
    assert main([*common, "--output", str(done), "--overwrite"]) == 0


def test_overwrite_never_clears_the_working_folder(tmp_path, capsys, monkeypatch, shared_data,
                                                   tiny_model):
    run_dir, args = finished_finetune(tmp_path, capsys, shared_data, tiny_model)
    monkeypatch.chdir(run_dir)
    text = one_line(capsys, *finetune_args(tiny_model, shared_data, Path("."), "--overwrite"))
    assert "--overwrite would clear" in text and (run_dir / "metrics.json").is_file()


def test_overwrite_never_removes_what_the_user_added_or_edited_in_a_run(tmp_path, capsys, shared_data, tiny_model):
    """--overwrite cleared every child of a folder bort had marked, a note the user added to it later too. bort now
    keeps when it wrote there (its sessions), and refuses to remove a file changed outside them."""
    out, args = finished_finetune(tmp_path, capsys, shared_data, tiny_model)
    time.sleep(0.05)  # file times tick in steps of a few milliseconds; a user adds files later than that
    notes, metrics = out / "notes.md", out / "metrics.json"
    notes.write_text("mine")
    metrics.write_text(metrics.read_text() + " ")  # a file bort wrote, edited since
    text = one_line(capsys, *args, "--overwrite")
    assert "--overwrite would remove 2 file(s) bort did not write" in text and "metrics.json, notes.md" in text
    assert notes.read_text() == "mine" and "move them out of it, or choose another --output" in text
    notes.rename(tmp_path / "notes.md")
    metrics.rename(tmp_path / "metrics.json")
    assert main([*args, "--overwrite"]) == 0 and (tmp_path / "notes.md").read_text() == "mine"  # the fix works
    assert main([*args, "--overwrite", "--lr", "1e-4"]) == 0  # and bort's own files are still its own


def test_a_changed_setting_is_named_with_both_values(tmp_path, capsys, shared_data, tiny_model):
    out, args = finished_finetune(tmp_path, capsys, shared_data, tiny_model)
    text = one_line(capsys, *args, "--resume", "--lr", "0.001")
    assert "(--lr 0.001 now, 5e-05 then)" in text and "use the original settings, or --overwrite" in text
    assert main([*args, "--overwrite", "--lr", "0.001"]) == 0  # the fix it suggests works
    assert main([*args, "--resume", "--lr", "0.001", "--alpha", "0.9"]) == 0  # no teacher: --alpha changes nothing


def test_the_divergence_message_leads_to_a_run_that_works(tmp_path, capsys, tiny_model, wiki_text):
    common = ["pretrain", "--arch", "1,2,32,64", "--teacher", str(tiny_model), "--corpus", str(wiki_text),
              "--max-steps", "6", "--batch-size", "2", "--max-seq-len", "16", "--eval-sequences", "2",
              "--save-every", "2", "--no-latency", "--quiet", "--max-sequences", "40", "--output", str(tmp_path / "p")]
    text = one_line(capsys, *common, "--lr", "1e9")
    assert "start again (--overwrite) with a lower --lr" in text
    assert main([*common, "--overwrite", "--lr", "1e-3"]) == 0


def test_export_refuses_nan_weights_another_tasks_dev_file_and_an_existing_onnx(tmp_path, capsys, shared_data):
    from transformers import BertConfig, BertForSequenceClassification

    from bort.io import default_source, load_tokenizer

    model = tmp_path / "rte-classifier"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2,
                        id2label={0: "entailment", 1: "not_entailment"})
    BertForSequenceClassification(config).save_pretrained(model)
    load_tokenizer(default_source()).save_pretrained(model)
    text = one_line(capsys, "export", "--model", str(model), "--output", str(tmp_path / "a"), "--dev",
                    str(shared_data / "superglue" / "CB" / "val.jsonl"))
    assert "are not among the model's 2 labels (entailment, not_entailment)" in text and not (tmp_path / "a").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.onnx").write_text("the user's own model")
    for extra in ((), ("--overwrite",)):
        one_line(capsys, "export", "--model", str(model), "--output", str(mine), *extra)
    assert (mine / "model.onnx").read_text() == "the user's own model"
    broken = BertForSequenceClassification(config)
    with torch.no_grad():
        broken.classifier.weight.fill_(float("nan"))
    broken.save_pretrained(model)
    text = one_line(capsys, "export", "--model", str(model), "--output", str(tmp_path / "b"))
    assert "ONNX output differs from PyTorch by nan" in text


def test_export_reports_the_opset_it_wrote(tmp_path, capsys, tiny_model):
    code, _ = run(capsys, "export", "--model", str(tiny_model), "--output", str(tmp_path / "x"), "--opset", "14")
    assert code == 0 and json.loads((tmp_path / "x" / "export_report.json").read_text())["opset"] == 14
    code, text = run(capsys, "export", "--model", str(tiny_model), "--output", str(tmp_path / "x"))
    assert code == 2 and "pass --overwrite to replace it" in text and "--resume" not in text  # export has no --resume


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch, tiny_model,
                                                                     wiki_text):
    """The writers fail as a full disk makes them fail (safetensors reports OS error 28 in its own exception)."""
    import errno

    import safetensors.torch
    import transformers.modeling_utils
    from safetensors import SafetensorError

    common = ["pretrain", "--arch", "1,2,32,64", "--teacher", str(tiny_model), "--corpus", str(wiki_text),
              "--max-steps", "4", "--batch-size", "2", "--max-seq-len", "16", "--eval-sequences", "2",
              "--save-every", "2", "--no-latency", "--quiet", "--max-sequences", "40"]
    reference = tmp_path / "reference"
    assert main([*common, "--output", str(reference)]) == 0
    capsys.readouterr()
    out = tmp_path / "full"
    real_save_model, calls = safetensors.torch.save_model, []

    def fills_up(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint, at step 4
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save_model(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_model", fills_up)
    text = one_line(capsys, *common, "--output", str(out))
    assert f"no space left on {out / 'checkpoints'}" in text or f"no space left on {out}" in text
    assert [p.name for p in bort.io.checkpoints(out / "checkpoints")] == ["checkpoint-00000002"]
    assert not [p for p in out.rglob(".tmp-*")]  # no half-written checkpoint left behind
    monkeypatch.setattr(safetensors.torch, "save_model", real_save_model)

    def final_save_fails(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", final_save_fails)
    text = one_line(capsys, *common, "--output", str(out), "--resume")
    assert f"no space left on {out}" in text and "rerun (with --resume" in text
    assert not (out / "model.safetensors").exists() and not [p for p in out.rglob(".tmp-*")]
    assert bort.io.checkpoints(out / "checkpoints")[-1].name == "checkpoint-00000004"  # the weights are not lost
    monkeypatch.undo()
    assert main([*common, "--output", str(out), "--resume"]) == 0  # the fix the line suggests works
    want = AutoModelForMaskedLM.from_pretrained(reference).state_dict()
    got = AutoModelForMaskedLM.from_pretrained(out).state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_redirected_output_has_no_bars_no_load_reports_and_no_none(tmp_path, shared_data, tiny_model):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = finetune_args(tiny_model, shared_data, tmp_path / "run")
    args.remove("--quiet")
    args.remove("--no-latency")
    for argv in (args, ["export", "--model", str(tiny_model), "--output", str(tmp_path / "onnx"), "--quantize", "int8"],
                 ["bench", "--models", str(tiny_model), "--repeats", "2"]):
        done = subprocess.run([sys.executable, "-m", "bort.cli", *argv], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        text = done.stdout + done.stderr
        assert "\r" not in text and "LOAD REPORT" not in text and "None" not in text, text[-2000:]
        assert argv[0] != "finetune" or "fine-tune STS-B seed 0: 100%" in text  # progress, as log lines


def test_what_bort_wrote_is_told_by_its_sessions(tmp_path):
    """The rule behind --overwrite: a file changed inside one of bort's sessions in a folder is bort's; one changed
    between them is not; a session with no recorded end (a killed run) lasts until the next began; a marker from
    before sessions were kept covers everything since it was made."""
    from bort import io

    folder = tmp_path / "run"
    folder.mkdir()
    files = {name: folder / name for name in ("during-1", "between", "during-2", "after-kill")}
    for path in files.values():
        path.write_text(path.name)
    times = {"during-1": 150, "between": 250, "during-2": 350, "after-kill": 500}
    for name, when in times.items():
        os.utime(files[name], (when, when))
    (folder / io.MARKER).write_text(json.dumps({"command": "finetune", "sessions": [[100, 200], [300, None]]}))
    assert io._written_by_others(folder) == ["between"]
    (folder / io.MARKER).write_text(json.dumps({"command": "finetune", "sessions": [[100, 200], [300, 400]]}))
    assert io._written_by_others(folder) == ["after-kill", "between"]
    (folder / io.MARKER).write_text(json.dumps({"command": "finetune", "created": "1970-01-01T00:03:20+00:00"}))
    assert io._written_by_others(folder) == ["during-1"]  # made at 200: only what is older is someone else's


def test_files_are_written_as_utf8_whatever_the_locale(tmp_path, tiny_model, wiki_text):
    """Under an ASCII locale with Python's UTF-8 mode off, `bort pretrain` wrote its weights, then crashed writing the
    model card's '⟨D=1, ...⟩' in the locale's encoding. bort writes and reads its text files as UTF-8."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LC_ALL": "POSIX", "PYTHONUTF8": "0"}
    out = tmp_path / "student"
    done = subprocess.run([sys.executable, "-X", "utf8=0", "-m", "bort.cli", "pretrain", "--arch", "1,2,32,64",
                           "--teacher", str(tiny_model), "--corpus", str(wiki_text), "--max-steps", "2",
                           "--batch-size", "2", "--max-seq-len", "16", "--max-sequences", "40", "--eval-sequences", "4",
                           "--no-latency", "--quiet", "--output", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "⟨D=1, A=2, H=32, I=64⟩" in (out / "README.md").read_text(encoding="utf-8")
