"""`bort pretrain`: loss math, slicing init, token cache, resume after a kill, 2-process DDP, stock loading.

Tiny models run one thread per process: on a shared 2-core machine, thread oversubscription makes
these small matrix products several times slower, not faster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tests.conftest import save_tiny_bert
from transformers import AutoModel, AutoModelForMaskedLM, BertConfig, BertForMaskedLM

from bort import pretrain
from bort.distill.data import cached_sequences, iter_packed_rows, read_documents
from bort.distill.init import choose_layers, slice_into
from bort.distill.pretrain import resolve_arch
from bort.engine.distillation import attention_relations, kl_divergence
from bort.errors import BortError
from bort.io import default_source, load_tokenizer

TINY = "1,2,32,64"  # D,A,H,I cut from the embedded MiniLM teacher
FAST = dict(max_seq_len=16, batch_size=2, eval_sequences=4, max_sequences=120, measure_latency=False)


@pytest.fixture(autouse=True)
def token_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "bort-cache"
    monkeypatch.setenv("BORT_CACHE", str(cache))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield cache
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data) -> Path:
    """A little real text, with one Latin-1 file to prove encoding problems do not crash the run."""
    folder = tmp_path_factory.mktemp("corpus")
    text = shared_data / "text" / "gutenberg" / "austen-emma.txt"
    (folder / "a.txt").write_text(text.read_text()[:60_000])
    (folder / "b.txt").write_bytes("Caf\xe9 cr\xe8me, na\xefve fa\xe7ade.\n".encode("latin-1") * 50)
    return folder


@pytest.fixture(scope="module")
def mlm_teacher(tmp_path_factory) -> Path:
    """A tiny BERT with an MLM head and the MiniLM vocabulary: exercises Bort's logit recipe."""
    return save_tiny_bert(tmp_path_factory.mktemp("mlm-teacher"), layers=2, heads=4, positions=64)


def train_losses(output: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}


# -- loss math --------------------------------------------------------------------------------------------

def test_kl_is_a_correct_temperature_softened_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 11), torch.randn(5, 11)
    p = (teacher / 2).softmax(-1)
    expected = (p * (p.log() - (student / 2).log_softmax(-1))).sum(-1).mean() * 4
    assert torch.allclose(kl_divergence(student, teacher, 2.0), expected, atol=1e-6)
    assert float(kl_divergence(teacher, teacher, 2.0)) == pytest.approx(0, abs=1e-6)


def test_attention_relations_zero_for_identical_and_compare_different_widths():
    torch.manual_seed(0)
    q = tuple(torch.randn(2, 6, 8) for _ in range(3))
    assert float(attention_relations(q, q, 4)) == pytest.approx(0, abs=1e-6)
    wide = tuple(torch.randn(2, 6, 12) for _ in range(3))
    value = attention_relations(q, wide, 4)  # widths 8 vs 12, 4 relation heads
    assert value > 0 and torch.isfinite(value)


# -- slicing init -----------------------------------------------------------------------------------------

def tiny_bert(layers=4, heads=4, hidden=32, inter=64, seed=0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers,
                                      num_attention_heads=heads, intermediate_size=inter)).eval()


def test_choose_layers_evenly_spaced_ending_at_the_top():
    assert choose_layers(6, 3) == [1, 3, 5] and choose_layers(24, 4) == [5, 11, 17, 23]
    assert choose_layers(6, 6) == list(range(6)) and choose_layers(6, 1) == [5]


def test_slicing_the_full_shape_reproduces_the_source_exactly():
    source, student = tiny_bert(), tiny_bert(seed=1)
    slice_into(student, source)
    ids = torch.randint(5, 50, (2, 9))
    assert torch.allclose(student(input_ids=ids).logits, source(input_ids=ids).logits, atol=1e-5)


def test_slicing_a_smaller_student_keeps_sub_blocks_and_rejects_a_larger_one():
    source = tiny_bert()
    student = tiny_bert(layers=2, heads=2, hidden=16, inter=24, seed=1)
    info = slice_into(student, source)
    assert info["layers"] == [1, 3] and info["tensors_copied"] == info["tensors_total"]
    s_ffn = student.bert.encoder.layer[1].intermediate.dense.weight
    t_ffn = source.bert.encoder.layer[3].intermediate.dense.weight
    # every kept neuron row of the student is a sub-row of one source neuron of the top layer
    assert all(any(torch.allclose(row, t_ffn[j, :].index_select(0, idx)) for j in range(64))
               for row, idx in [(s_ffn[0], torch.topk(source.bert.embeddings.word_embeddings.weight.pow(2)
                                                      .sum(0), 16).indices.sort().values)])
    ids = torch.randint(5, 50, (1, 7))
    assert torch.isfinite(student(input_ids=ids).logits).all()
    with pytest.raises(BortError, match="no larger than the source"):
        slice_into(tiny_bert(layers=5), source)


# -- data ------------------------------------------------------------------------------------------------

def test_token_cache_matches_packing_and_is_reused(corpus, tmp_path):
    tokenizer = load_tokenizer(default_source())
    rows = cached_sequences([corpus], tokenizer, 32, cache_dir=tmp_path)
    expected = torch.tensor(list(iter_packed_rows(read_documents([corpus]), tokenizer, 32)))
    assert torch.equal(torch.from_numpy(np.array(rows)).long(), expected)
    stamp = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = cached_sequences([corpus], tokenizer, 32, cache_dir=tmp_path)
    assert again.shape == rows.shape and {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamp
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_datasets_corpus_reads_the_train_split_like_files(shared_data, tmp_path):
    """`hf:NAME` goes through `datasets.load_dataset` (here a local folder: the hub is unreachable)."""
    lines = [line for line in (shared_data / "text" / "gutenberg" / "austen-emma.txt").read_text()[:20_000]
             .splitlines() if line.strip()]
    folder = tmp_path / "emma"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in
                                                enumerate(lines)))
    tokenizer = load_tokenizer(default_source())
    got = cached_sequences([f"hf:{folder}"], tokenizer, 32, cache_dir=tmp_path / "cache")
    expected = torch.tensor(list(iter_packed_rows(lines, tokenizer, 32)))
    assert torch.equal(torch.from_numpy(np.array(got)).long(), expected)
    with pytest.raises(BortError, match="cannot load corpus hf:no-such/corpus.*network"):
        cached_sequences(["hf:no-such/corpus"], tokenizer, 32, cache_dir=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp" in p.name]


# -- runs ------------------------------------------------------------------------------------------------

def test_hidden_teacher_run_writes_a_stock_folder_with_a_model_card(corpus, tmp_path):
    out = tmp_path / "run"
    summary = pretrain(TINY, out, corpus=[corpus], max_steps=3, eval_every=3, save_every=2, log_every=1,
                       attention_weight=1.0, init="source", **{**FAST, "measure_latency": True})
    assert summary.distillation == "hidden states" and summary.latency["cpu_latency_ms"] > 0
    assert {"hidden", "pooled", "mlm", "attention", "cosine"} <= set(summary.eval)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    mlm = AutoModelForMaskedLM.from_pretrained(out)
    base, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]  # the pooler is saved: nothing is new
    assert mlm.config.num_hidden_layers == 1 and base.config.hidden_size == 32
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])["bort"]
    assert meta["architecture"] == {"D": 1, "A": 2, "H": 32, "I": 64} and meta["steps"] == 3
    assert meta["params"] > meta["effective_params"] > 0 and meta["init"] == "source"


def test_mlm_teacher_uses_bort_logit_recipe(corpus, mlm_teacher, tmp_path):
    summary = pretrain("1,2,16,32", tmp_path / "run", teacher=mlm_teacher, corpus=[corpus], max_steps=2,
                       eval_every=2, save_every=0, **FAST)
    assert summary.distillation == "logits (Bort recipe)"
    assert {"kd", "mlm", "agreement", "teacher_accuracy"} <= set(summary.eval)
    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "run").config.hidden_size == 16


def test_arch_from_a_chosen_folder_and_a_config_json(tmp_path):
    resolve_arch(TINY, None).save_pretrained(tmp_path / "chosen")
    assert resolve_arch(tmp_path / "chosen", None).hidden_size == 32
    assert resolve_arch(tmp_path / "chosen" / "config.json", None).num_hidden_layers == 1


def test_bad_inputs_are_one_line_errors(corpus, tmp_path):
    with pytest.raises(BortError, match="does not exist"):
        pretrain(TINY, tmp_path / "a", corpus=[tmp_path / "missing"], max_steps=1, **FAST)
    config = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    (tmp_path / "config.json").write_text(config.to_json_string())
    with pytest.raises(BortError, match="vocabulary"):
        pretrain(tmp_path / "config.json", tmp_path / "b", corpus=[corpus], max_steps=1, **FAST)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(BortError, match="cannot write"):
        pretrain(TINY, blocked / "out", corpus=[corpus], max_steps=1, **FAST)


def test_incompatible_resume_and_non_finite_loss(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    pretrain(TINY, out, corpus=[corpus], max_steps=4, save_every=2, eval_every=0, **FAST)
    with pytest.raises(BortError, match="already holds files; pass --resume"):
        pretrain(TINY, out, corpus=[corpus], max_steps=4, save_every=2, eval_every=0, **FAST)
    with pytest.raises(BortError, match=r"other settings \(--batch-size 3 now, 2 then\)"):
        pretrain(TINY, out, corpus=[corpus], max_steps=4, save_every=2, eval_every=0, resume=True,
                 **{**FAST, "batch_size": 3})

    import bort.engine.distillation as distillation

    real, calls = distillation.hidden_distance, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        value = real(*args, **kwargs)
        return value * float("nan") if len(calls) == 5 else value  # the third training step's hidden term

    monkeypatch.setattr(distillation, "hidden_distance", poisoned)
    bad = tmp_path / "bad"
    with pytest.raises(BortError, match=r"non-finite.*step 3.*checkpoint-00000002"):
        pretrain(TINY, bad, corpus=[corpus], max_steps=6, save_every=2, eval_every=0, **FAST)
    assert [p.name for p in (bad / "checkpoints").iterdir()] == ["checkpoint-00000002"]


# -- resume after a kill, and 2 processes ----------------------------------------------------------------

def cli_args(corpus: Path, output: Path, steps: int) -> list[str]:
    return ["pretrain", "--arch", TINY, "--corpus", str(corpus), "--output", str(output), "--max-steps",
            str(steps), "--batch-size", "2", "--max-seq-len", "16", "--eval-every", "0", "--save-every", "4",
            "--log-every", "1", "--max-sequences", "120", "--eval-sequences", "4", "--no-latency"]


def test_resume_after_kill_and_a_torn_log_line_gives_the_same_trajectory(corpus, tmp_path, token_cache):
    steps = 40
    reference = tmp_path / "reference"
    pretrain(TINY, reference, corpus=[corpus], max_steps=steps, save_every=4, eval_every=0, log_every=1,
             **FAST)
    out = tmp_path / "killed"
    env = {**os.environ, "BORT_CACHE": str(token_cache)}
    proc = subprocess.Popen([sys.executable, "-m", "bort.cli", *cli_args(corpus, out, steps)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and max(train_losses(out) or [0]) >= 10:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert max(train_losses(out)) < steps
    with open(out / "metrics.jsonl", "a") as log:  # what a SIGKILL mid-write leaves: half a line
        log.write('{"kind": "train", "step": 99, "lo')
    from bort.cli import main

    assert main([*cli_args(corpus, out, steps), "--resume"]) == 0
    got, want = train_losses(out), train_losses(reference)
    assert sorted(got) == list(range(1, steps + 1))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), step


def test_two_process_cpu_run_with_gloo(corpus, tmp_path, token_cache):
    out = tmp_path / "ddp"
    env = {**os.environ, "BORT_CACHE": str(token_cache)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), "-m", "bort.cli", *cli_args(corpus, out, 4)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "pretrain.json").read_text())
    assert summary["processes"] == 2 and summary["batch_size"] == 4
    assert sorted(train_losses(out)) == [1, 2, 3, 4]
    AutoModelForMaskedLM.from_pretrained(out)


def test_source_init_starts_closer_to_the_teacher_than_random(corpus, tmp_path):
    start = {}
    for init in ("random", "source"):
        pretrain("2,6,192,768", tmp_path / init, corpus=[corpus], init=init, max_steps=1, eval_every=1, **FAST)
        lines = [json.loads(line) for line in (tmp_path / init / "metrics.jsonl").read_text().splitlines()]
        start[init] = next(r for r in lines if r["kind"] == "eval" and r["step"] == 0)
    assert start["source"]["hidden"] < start["random"]["hidden"]
    assert start["source"]["cosine"] > start["random"]["cosine"] + 0.2
