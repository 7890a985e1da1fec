"""Agora: Θ grids, the honest dev split, transforms and band, labeller checks, a tiny CLI run and its resume."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter

import pytest
from transformers import AutoModel

from bort.agora.rounds import THETA_KEYS, carve_dev, neighbours
from bort.agora.transforms import NeighbourSubstitution, Similarity, make_transform
from bort.cli import main
from bort.config import AgoraConfig, ExtractConfig, FinetuneConfig, parse_theta
from bort.errors import BortError
from bort.io import load_tokenizer
from bort.tasks import get_task
from bort.tasks.finetune import load_data, train
from bort.tasks.teacher import TaskTeacher


def test_theta_is_one_grid_grammar_in_every_command(tmp_path):
    base = AgoraConfig(task="CB", output="x")
    assert parse_theta("lr=1e-5,2e-5;batch_size=8,16", base, THETA_KEYS) == [
        {"lr": 1e-5, "batch_size": 8}, {"lr": 1e-5, "batch_size": 16},
        {"lr": 2e-5, "batch_size": 8}, {"lr": 2e-5, "batch_size": 16}]
    assert parse_theta(None, base, THETA_KEYS) == [{}]
    with pytest.raises(BortError, match="unknown key 'momentum'"):
        parse_theta("momentum=0.9", base, THETA_KEYS)
    with pytest.raises(BortError, match="lr is given twice; list its values once"):
        parse_theta("lr=1e-3;lr=3e-3", ExtractConfig(), ("lr",))
    with pytest.raises(BortError, match="--lr must be above 0"):
        parse_theta("lr=-1", ExtractConfig(), ("lr",))
    with pytest.raises(BortError, match="--lr must be a finite number"):
        parse_theta("lr=nan", ExtractConfig(), ("lr",))
    (tmp_path / "theta.yaml").write_text("- {lr: 0.001}\n- {lr: 0.003, warmup: 0.2}\n")
    assert parse_theta(str(tmp_path / "theta.yaml"), ExtractConfig(), ("lr", "warmup")) == [
        {"lr": 0.001}, {"lr": 0.003, "warmup": 0.2}]


def test_agora_dev_is_carved_from_train_stratified(shared_data):
    task = get_task("CB")
    rows = task.load("train", shared_data)
    train, dev = carve_dev(task, rows, 0.2)
    assert len(train) + len(dev) == len(rows) and not {id(e) for e in train} & {id(e) for e in dev}
    whole, held = Counter(e.label for e in rows), Counter(e.label for e in dev)
    for label, count in whole.items():
        assert held[label] == round(0.2 * count)
    assert carve_dev(task, rows, 0.2) == (train, dev)  # the same split for every seed
    stsb = get_task("STS-B")
    _, dev = carve_dev(stsb, stsb.load("dev", shared_data), 0.1)
    assert 140 <= len(dev) <= 160


def test_transforms_change_words_and_the_band_filters(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    encoder = AutoModel.from_pretrained(tiny_model)
    nn = NeighbourSubstitution(tokenizer, encoder.get_input_embeddings().weight, fraction=0.5)
    text = "the quick brown fox jumps over the lazy dog"
    out = nn(text, 3, random.Random(0))
    assert len(out) == 3 and all(o != text and len(o.split()) >= 5 for o in out)
    infill = make_transform("infill", encoder, tokenizer, 0.3, infill_model=tiny_model)
    assert all(o != text for o in infill(text, 2, random.Random(0)))
    with pytest.raises(BortError, match="needs a masked-LM"):
        make_transform("infill", encoder, tokenizer)
    sim = Similarity(encoder, tokenizer)
    assert sim(text, [text])[0] == pytest.approx(1.0, abs=1e-5)
    example = get_task("SST-2").parse({"sentence": text})
    from bort.tasks.registry import Example

    point = Example(example[0], label="1")
    assert neighbours(point, nn, sim, 2, (1.01, 1.02), random.Random(0)) == []  # nothing inside an empty band
    kept = neighbours(point, nn, sim, 2, (0.0, 0.9999), random.Random(0))
    assert kept and all(e.label is None and e.text != text and 0 <= s <= 0.9999 for e, _, s in kept)


def test_labeller_label_set_must_match(tmp_path, shared_data, tiny_model):
    rte = get_task("RTE")
    folder = tmp_path / "rte-labeller"
    train(tiny_model, rte, rte.load("train", shared_data)[:4], FinetuneConfig(
        task="RTE", output=str(folder), max_steps=1, batch_size=2, max_seq_len=16, progress=False), folder)
    teacher = TaskTeacher(folder, rte, role="labeller")
    assert teacher.order == [0, 1]
    points = rte.load("dev", shared_data)[:3]
    reordered = tmp_path / "reordered"  # the same weights, its labels listed the other way round
    shutil.copytree(folder, reordered)
    config = json.loads((reordered / "config.json").read_text())
    config["id2label"] = {"0": "not_entailment", "1": "entailment"}
    config["label2id"] = {"not_entailment": 0, "entailment": 1}
    (reordered / "config.json").write_text(json.dumps(config))
    swapped = TaskTeacher(reordered, rte)
    assert swapped.order == [1, 0]  # its outputs come back in the task's order
    assert (swapped.outputs(points) == teacher.outputs(points)[:, ::-1]).all()
    assert swapped.labels_of(swapped.outputs(points)) == [
        {"entailment": "not_entailment", "not_entailment": "entailment"}[y]
        for y in teacher.labels_of(teacher.outputs(points))]
    with pytest.raises(BortError, match=r"label set \(entailment, not_entailment\) differs from task CB"):
        TaskTeacher(folder, get_task("CB"), role="labeller")
    with pytest.raises(BortError, match="not a fine-tuned classifier"):
        TaskTeacher(tiny_model, rte, role="labeller")


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_tiny_agora_run_end_to_end_and_resume(tmp_path, shared_data, tiny_model, capsys):
    out = tmp_path / "agora"
    args = ["finetune", "--model", str(tiny_model), "--task", "CB", "--data-dir", str(shared_data), "--output",
            str(out), "--agora", "--labeller-from", str(tiny_model), "--compare", "--rounds", "2",
            "--theta", "lr=1e-4,3e-4", "--max-train-samples", "48", "--agora-dev-fraction", "0.4",
            "--samples-per-mistake", "2", "--band", "0.0", "0.9999", "--epochs", "1", "--batch-size", "8",
            "--max-seq-len", "32", "--no-latency", "--quiet"]
    code, text = run_cli(args, capsys)
    assert code == 0, text
    assert "accuracy: plain" in text and "agora" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"agora", "plain", "labeller_dev", "rounds"}
    state = metrics["rounds"]["0"]
    r0 = json.loads((out / "agora" / "seed-0" / "round-0" / "round.json").read_text())
    assert set(r0["scores"]) == {"0", "1"} and len(r0["kept"]) == 1 and r0["generated"] > 0
    generated = [json.loads(line) for line in (out / "agora" / "seed-0" / "round-0" / "generated.jsonl").open()]
    assert all(g["example"]["label"] in ("entailment", "contradiction", "neutral") and g["source"]["label"]
               for g in generated)
    r1 = json.loads((out / "agora" / "seed-0" / "round-1" / "round.json").read_text())
    assert r1["n_train"] == r0["n_train"] + len(generated)
    plain = json.loads((out / "plain" / "seed-0" / "metrics.json").read_text())
    assert plain["steps"] == state["best"]["steps"]  # the same number of gradient steps
    # the returned round is chosen on a half of Agora's dev split that no generated point comes from
    cb = get_task("CB")
    _, agora_dev = carve_dev(cb, load_data(cb, shared_data, 48).train, 0.4)
    mistakes_from, held_out = carve_dev(cb, agora_dev, 0.5, seed=1)
    assert (metrics["n_agora_dev"], metrics["n_selection_dev"]) == (len(mistakes_from), len(held_out))
    held = {e.to_json()["text"] + str(e.pair) for e in held_out}
    assert held and all(g["source"]["text"] + str(g["source"].get("pair")) not in held for g in generated)

    # a crash after round 0: drop round 1 and the final model, then resume: the same result, round 0 reused
    saved = dict(metrics)
    state_file = out / "agora" / "seed-0" / "state.json"
    st = json.loads(state_file.read_text())
    st["rounds"], st["alive"] = st["rounds"][:1], st["rounds"][0]["kept"]
    state_file.write_text(json.dumps(st))
    for path in ("agora/seed-0/round-1", "agora/seed-0/final", "plain"):
        shutil.rmtree(out / path)
    (out / "metrics.json").unlink()
    mtime = (out / "agora" / "seed-0" / "round-0" / "generated.jsonl").stat().st_mtime
    code, text = run_cli(args, capsys)
    assert code == 2 and "pass --resume" in text
    code, text = run_cli([*args[:args.index("--band")], "--band", "0.1", "0.9", *args[args.index("--band") + 3:],
                          "--resume"], capsys)
    assert code == 2 and "the Agora run in" in text and "--band [0.1, 0.9] now, [0.0, 0.9999] then" in text
    code, text = run_cli(args + ["--resume"], capsys)
    assert code == 0, text
    again = json.loads((out / "metrics.json").read_text())
    assert again["agora"] == saved["agora"] and again["plain"] == saved["plain"]
    assert (out / "agora" / "seed-0" / "round-0" / "generated.jsonl").stat().st_mtime == mtime


def test_bad_agora_input_is_one_line(tmp_path, shared_data, tiny_model, capsys):
    base = ["finetune", "--model", str(tiny_model), "--data-dir", str(shared_data), "--output", str(tmp_path / "x")]
    code, text = run_cli(base + ["--task", "nope"], capsys)
    assert code == 2 and "unknown task 'nope'; known tasks:" in text and len(text.strip().splitlines()) == 1
    code, text = run_cli(base + ["--task", "CB", "--agora", "--max-train-samples", "20"], capsys)
    assert code == 2 and "exactly one of --labeller" in text
    code, text = run_cli(base + ["--task", "CB", "--agora", "--labeller", str(tiny_model)], capsys)
    assert code == 2 and "not a fine-tuned classifier" in text


def test_agora_with_a_teacher_uses_soft_labels_and_a_uniform_control(tmp_path, shared_data, tiny_model, capsys):
    out = tmp_path / "soft"
    args = ["finetune", "--model", str(tiny_model), "--task", "RTE", "--data-dir", str(shared_data), "--output",
            str(out), "--agora", "--teacher-from", str(tiny_model), "--compare", "--uniform-control", "--rounds", "2",
            "--max-train-samples", "48", "--agora-dev-fraction", "0.4", "--samples-per-mistake", "2", "--band", "0.0",
            "0.9999", "--epochs", "1", "--batch-size", "8", "--max-seq-len", "32", "--no-latency", "--quiet"]
    code, text = run_cli(args, capsys)
    assert code == 0, text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == "soft" and {"agora", "distilled", "uniform"} <= set(metrics)
    assert "accuracy" in metrics["majority_dev"] and "accuracy" in metrics["labeller_dev"]
    generated = [json.loads(line) for line in (out / "agora" / "seed-0" / "round-0" / "generated.jsonl").open()]
    assert generated and all(len(g["soft"]) == 2 and g["example"]["label"] in ("entailment", "not_entailment")
                             for g in generated)
    best = metrics["rounds"]["0"]["best"]
    made = sum(r["generated"] for r in metrics["rounds"]["0"]["rounds"][:best["round"]])
    uniform = [json.loads(line) for line in (out / "uniform" / "seed-0" / "generated.jsonl").open()]
    assert len(uniform) == metrics["uniform_points"]["0"] == made and all("soft" in u for u in uniform)
    steps = {m: json.loads((out / m / "seed-0" / "metrics.json").read_text())["steps"] for m in ("distilled",
                                                                                                 "uniform")}
    assert steps["distilled"] == steps["uniform"] == best["steps"]  # the same optimizer steps in every column
    if metrics["labeller_dev"]["accuracy"] <= metrics["majority_dev"]["accuracy"]:
        assert "no better than always predicting the majority" in text
