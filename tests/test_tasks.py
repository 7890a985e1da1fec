"""Tasks: metrics against hand-computed values, loaders on the real files, submissions, the fine-tuning loop."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForMultipleChoice, AutoModelForSequenceClassification

import bort
from bort.config import FinetuneConfig
from bort.errors import BortError
from bort.tasks import Example, file_task, get_task, list_tasks
from bort.tasks import finetune as ft
from bort.tasks.metrics import compute, mean_std
from bort.tasks.registry import unlabelled_text


def test_metrics_match_hand_computed_values():
    preds, gold = [1, 0, 1, 1], [1, 1, 1, 0]
    out = compute(["accuracy", "f1", "matthews_correlation"], preds, gold)
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["f1"] == pytest.approx(2 / 3)  # tp 2, fp 1, fn 1
    assert out["matthews_correlation"] == pytest.approx((2 * 0 - 1 * 1) / math.sqrt(3 * 3 * 1 * 1))
    # macro F1: class 0 F1 1, class 1 F1 0, class 2 precision 2/3 recall 1 -> 0.8; mean 0.6
    assert compute(["macro_f1"], [0, 2, 2, 2], [0, 1, 2, 2])["macro_f1"] == pytest.approx(0.6)
    assert compute(["spearman"], [1, 2, 3, 4], [1, 3, 2, 4])["spearman"] == pytest.approx(1 - 6 * 2 / 60)
    x, y = [1.0, 2.0, 3.0], [1.0, 2.0, 4.0]
    mx, my = 2.0, 7 / 3
    r = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / math.sqrt(
        sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert compute(["pearson"], x, y)["pearson"] == pytest.approx(r)
    assert compute(["pearson", "matthews_correlation"], [1, 1, 1], [0, 1, 2]) == {"pearson": 0.0,
                                                                                   "matthews_correlation": 0.0}
    mean, std = mean_std([{"accuracy": 0.5}, {"accuracy": 0.7}])
    assert mean["accuracy"] == pytest.approx(0.6) and std["accuracy"] == pytest.approx(math.sqrt(0.02))


ROWS = {"CoLA": (8551, 1043, 1063), "SST-2": (67349, 872, 1821), "MRPC": (3668, 408, 1725),
        "STS-B": (5749, 1500, 1379), "RTE": (2490, 277, 3000), "WNLI": (635, 71, 146),
        "superglue/RTE": (2490, 277, 3000), "CB": (250, 56, 250), "COPA": (400, 100, 500)}


@pytest.mark.parametrize("name", list(ROWS))
def test_loaders_read_the_official_files(shared_data, name):
    task = get_task(name)
    train, dev, test = (task.load(split, shared_data) for split in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == ROWS[name]
    assert all(e.label is not None for e in train + dev) and all(e.label is None for e in test)
    if task.kind == "classification":
        assert {e.label for e in train} == set(task.labels)
    if task.kind == "multiple_choice":
        assert all(len(e.choices) == 2 for e in train) and {e.label for e in train} == {0, 1}
    assert not train[0].text.startswith("\ufeff")


def test_known_values_of_real_rows(shared_data):
    mrpc = get_task("MRPC").load("train", shared_data)[0]
    assert mrpc.label == "1" and mrpc.text.startswith("Amrozi accused") and mrpc.pair.startswith("Referring")
    stsb = get_task("STS-B").load("dev", shared_data)[0]
    assert stsb.label == 5.0 and stsb.pair
    assert get_task("CoLA").load("train", shared_data)[0].text.startswith("Our friends won't")
    assert get_task("COPA").load("train", shared_data)[0].text.endswith("What was the cause?")


def test_a_tasks_unlabelled_text_holds_every_sentence_once_and_no_label(shared_data):
    """The corpus `bort run` distils on by default: texts, pairs and answer choices, whitespace collapsed, each once."""
    examples = [Example("A  cat\tsat.", "A dog ran.", "1"), Example("A dog ran.", " ", "0"),
                Example("Why?", None, None, choices=("Rain.", "Sun."))]
    assert unlabelled_text(examples) == "A cat sat.\nA dog ran.\nWhy?\nRain.\nSun.\n"
    copa = unlabelled_text(get_task("COPA").load("train", shared_data))
    first = get_task("COPA").load("train", shared_data)[0]
    assert copa.startswith(f"{first.text}\n{first.choices[0]}\n") and "\n0\n" not in copa


def test_the_constant_guess_is_the_most_common_train_label_or_the_mean_score(shared_data):
    """The floor `bort run`'s report and Agora's labeller check compare against."""
    mrpc = get_task("MRPC")
    rows = lambda *labels: [Example("a", "b", label) for label in labels]  # noqa: E731
    tiny = ft.TaskData(mrpc, rows("1", "1", "0"), {"dev": rows("1", "0", "0", "1")}, {})
    assert ft.majority_score(mrpc, tiny) == pytest.approx({"f1": 2 / 3, "accuracy": 0.5})
    real = ft.load_data(mrpc, shared_data, test=False)  # 279 paraphrases of 408 dev pairs; "1" is train's majority
    assert ft.majority_score(mrpc, real) == pytest.approx({"f1": 558 / 687, "accuracy": 279 / 408})
    stsb = get_task("STS-B")
    assert ft.majority_score(stsb, ft.load_data(stsb, shared_data, test=False)) == {"pearson": 0.0, "spearman": 0.0}

def test_registry_errors_are_one_line(tmp_path, shared_data):
    with pytest.raises(BortError, match="unknown task 'nope'; known tasks: CoLA, SST-2, MRPC.*COPA"):
        get_task("nope")
    assert {"MNLI", "QQP", "QNLI", "BoolQ", "WiC", "superglue/RTE"} <= set(list_tasks())
    with pytest.raises(BortError, match="split file .*glue/QQP/train.tsv is missing"):
        get_task("QQP").load("train", shared_data)
    bad = tmp_path / "glue" / "RTE"
    bad.mkdir(parents=True)
    (bad / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(BortError, match="label 'maybe' at train.tsv row 1 is not one of .*entailment"):
        get_task("RTE").load("train", tmp_path)
    (bad / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(BortError, match="train set is empty"):
        ft.load_data(get_task("RTE"), tmp_path)
    (bad / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\t\n")
    with pytest.raises(BortError, match="train row 2 has no label"):  # at load time, not hours into training
        ft.load_data(get_task("RTE"), tmp_path)


def test_datasets_and_run_glue_names_are_accepted():
    pairs = {"stsb": "STS-B", "sst2": "SST-2", "mnli": "MNLI", "qnli": "QNLI", "qqp": "QQP", "cola": "CoLA",
             "mrpc": "MRPC", "rte": "RTE", "wnli": "WNLI", "boolq": "BoolQ", "cb": "CB", "copa": "COPA",
             "wic": "WiC", "wsc": "WSC", "glue/stsb": "STS-B", "superglue/rte": "RTE"}
    for alias, name in pairs.items():
        assert get_task(alias).name == name, alias
    assert get_task("rte").benchmark == "glue" and get_task("superglue/rte").benchmark == "superglue"
    assert "stsb" not in list_tasks()  # the listing names each task once


def test_custom_task_with_column_mapping(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("review,score\ngood film,pos\nbad film,neg\nfine,pos\n")
    task = file_task(train, train, text_column="review", label_column="score")
    assert task.labels == ("neg", "pos") and task.load("train")[1].label == "neg"
    with pytest.raises(BortError, match="no column 'label'"):
        file_task(train)
    reg = tmp_path / "reg.jsonl"
    reg.write_text('{"a": "x", "b": "y", "y": 0.5}\n')
    assert file_task(reg, kind="regression", text_column="a", pair_column="b", label_column="y").load(
        "train")[0].label == 0.5


def test_submission_formats(tmp_path, shared_data):
    import numpy as np

    rte, stsb, cb = get_task("RTE"), get_task("STS-B"), get_task("CB")
    rows = rte.load("test", shared_data)[:3]
    ft.write_submission(rte, "test", rows, np.array([0, 1, 0]), tmp_path)
    assert (tmp_path / "RTE.tsv").read_text().splitlines() == [
        "index\tprediction", "0\tentailment", "1\tnot_entailment", "2\tentailment"]
    ft.write_submission(stsb, "test", stsb.load("test", shared_data)[:2], np.array([5.7, 2.12345]), tmp_path)
    assert (tmp_path / "STS-B.tsv").read_text().splitlines()[1:] == ["0\t5.0", "1\t2.123"]
    ft.write_submission(cb, "test", cb.load("test", shared_data)[:1], np.array([2]), tmp_path)
    assert json.loads((tmp_path / "CB.jsonl").read_text()) == {"idx": 0, "label": "neutral"}


def test_finetune_writes_stock_folders_per_seed_and_the_best_at_the_top(tmp_path, shared_data, tiny_model):
    out = bort.finetune(tiny_model, "rte", tmp_path / "rte", data_dir=shared_data, seeds=[0, 1], max_steps=2,
                        batch_size=4, max_seq_len=32, max_train_samples=16, measure_latency=False, progress=False)
    assert set(out.summary["plain"]["seeds"]) == {"0", "1"} and "accuracy" in out.summary["plain"]["mean"]
    folder = tmp_path / "rte" / "plain" / "seed-1"
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.id2label == {0: "entailment", 1: "not_entailment"}
    assert (folder / "RTE.tsv").read_text().count("\n") == 3001 and (folder / "README.md").is_file()
    top, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rte", output_loading_info=True)
    assert not info["missing_keys"] and out.best_seed in (0, 1)  # the output folder itself is the best model
    best = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rte" / "plain" / f"seed-{out.best_seed}")
    assert all(torch.equal(a, b) for a, b in zip(top.state_dict().values(), best.state_dict().values(), strict=True))
    with pytest.raises(BortError, match="already holds files; pass --resume"):
        bort.finetune(tiny_model, "RTE", tmp_path / "rte", data_dir=shared_data)
    bort.finetune(tiny_model, "COPA", tmp_path / "copa", data_dir=shared_data, max_steps=1, batch_size=2,
                  max_seq_len=32, max_train_samples=8, measure_latency=False, progress=False)
    assert AutoModelForMultipleChoice.from_pretrained(tmp_path / "copa" / "plain" / "seed-0")
    assert AutoModelForMultipleChoice.from_pretrained(tmp_path / "copa")


def test_resume_after_a_crash_continues_the_same_trajectory(tmp_path, shared_data, tiny_model, monkeypatch):
    task = get_task("STS-B")
    data = task.load("train", shared_data)[:24]
    config = FinetuneConfig(task="STS-B", output=str(tmp_path), max_steps=5, batch_size=4, max_seq_len=32,
                            save_every=2, seed=3, progress=False)
    whole, _ = ft.train(tiny_model, task, data, config, tmp_path / "whole")
    real = ft.TaskBatches.batch

    def crash(self, step, *args):
        if step == 3:
            raise KeyboardInterrupt
        return real(self, step, *args)

    monkeypatch.setattr(ft.TaskBatches, "batch", crash)
    with pytest.raises(KeyboardInterrupt):
        ft.train(tiny_model, task, data, config, tmp_path / "crashed")
    assert (tmp_path / "crashed" / "checkpoints" / "checkpoint-00000002" / "state.json").is_file()
    monkeypatch.setattr(ft.TaskBatches, "batch", real)
    resumed, steps = ft.train(tiny_model, task, data, config, tmp_path / "crashed", resume=True)
    assert steps == 5 and not (tmp_path / "crashed" / "checkpoints").exists()
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    with pytest.raises(BortError, match="finished run in .* was made with other settings.*lr"):
        ft.train(tiny_model, task, data, FinetuneConfig(**{**config.to_dict(), "lr": 1e-3}), tmp_path / "crashed")


# -- task distillation ------------------------------------------------------------------------------------------

def test_distillation_loss_matches_hand_computed_values():
    from bort.engine.task import TaskObjective

    class Fixed(torch.nn.Module):  # a "model" whose logits are given, so the loss can be computed by hand
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.tensor(logits))

        def forward(self, **_):
            return type("Out", (), {"logits": self.logits})()

    student, teacher, gold, alpha, t = [[1.0, 0.0], [0.0, 2.0]], [[3.0, 1.0], [0.5, 0.5]], [0, 1], 0.3, 2.0
    terms = TaskObjective(Fixed(student), regression=False, alpha=alpha, temperature=t)(
        {"labels": torch.tensor(gold), "teacher": torch.tensor(teacher)})

    def softmax(row, temp=1.0):
        e = [math.exp(v / temp) for v in row]
        return [v / sum(e) for v in e]

    ce = -sum(math.log(softmax(s)[g]) for s, g in zip(student, gold, strict=True)) / 2
    kl = sum(sum(p * math.log(p / q) for p, q in zip(softmax(tt, t), softmax(s, t), strict=True))
             for s, tt in zip(student, teacher, strict=True)) / 2 * t**2
    assert terms["gold"].item() == pytest.approx(ce, rel=1e-5) and terms["kd"].item() == pytest.approx(kl, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(alpha * ce + (1 - alpha) * kl, rel=1e-5)
    scores = TaskObjective(Fixed([[0.5], [2.0]]), regression=True, alpha=alpha)(
        {"labels": torch.tensor([1.0, 1.0]), "teacher": torch.tensor([0.0, 3.0])})
    mse_gold, mse_teacher = (0.25 + 1.0) / 2, (0.25 + 1.0) / 2
    assert scores["loss"].item() == pytest.approx(alpha * mse_gold + (1 - alpha) * mse_teacher)


def test_hidden_state_term_matches_hand_computed_values():
    from bort.engine.task import TaskObjective, layer_pairs

    assert layer_pairs(2, 6) == [(0, 0), (1, 3), (2, 6)] and layer_pairs(4, 12) == [(0, 0), (1, 3), (2, 6), (3, 9),
                                                                                   (4, 12)]

    class Fixed(torch.nn.Module):  # given logits and hidden states (1 layer, 2 rows x 2 tokens x width 1)
        def __init__(self, states, layers):
            super().__init__()
            self.config = type("Config", (), {"num_hidden_layers": layers, "hidden_size": 1})()
            self.states = [torch.nn.Parameter(torch.tensor(h)) for h in states]
            self.logits = torch.nn.Parameter(torch.zeros(2, 2))

        def forward(self, output_hidden_states=False, **_):
            return type("Out", (), {"logits": self.logits, "hidden_states": tuple(self.states)})()

    student = Fixed([[[[1.0], [5.0]], [[2.0], [9.0]]], [[[0.0], [7.0]], [[1.0], [8.0]]]], layers=1)
    teacher = Fixed([[[[2.0], [0.0]], [[4.0], [0.0]]], [[[9.0], [0.0]], [[9.0], [0.0]]],
                     [[[3.0], [0.0]], [[1.0], [0.0]]]], layers=2)
    batch = {"labels": torch.tensor([0, 1]), "teacher": torch.zeros(2, 2),
             "attention_mask": torch.tensor([[1, 0], [1, 0]])}  # the second token of each row is padding
    objective = TaskObjective(student, regression=False, alpha=0.5, teacher=teacher, hidden_weight=0.5)
    terms = objective(batch, objective.targets(batch))
    # layer 0 against 0: student (1, 2), teacher (2, 4): error 1 + 4 over the teacher's variance 1 + 1 -> 2.5;
    # student layer 1 against teacher layer 2: (0, 1) against (3, 1): 9 over 1 + 1 -> 4.5; the mean is 3.5
    assert terms["hidden"].item() == pytest.approx(3.5)
    assert terms["loss"].item() == pytest.approx(0.5 * terms["gold"].item() + 0.5 * terms["kd"].item() + 0.5 * 3.5)
    assert TaskObjective(student, regression=False, teacher=teacher).teacher is None  # no weight, no teacher pass


def test_hidden_state_distillation_trains_classifiers_and_multiple_choice(tmp_path, shared_data, tiny_model, capsys):
    from bort.cli import main

    common = ["--data-dir", str(shared_data), "--max-steps", "2", "--batch-size", "4", "--max-seq-len", "32",
              "--max-train-samples", "16", "--no-latency", "--quiet", "--model", str(tiny_model)]
    for task in ("rte", "copa"):
        out = tmp_path / task
        assert main(["finetune", "--task", task, *common, "--output", str(out), "--teacher-from", str(tiny_model),
                     "--hidden-weight", "1"]) == 0
        log = [json.loads(line) for line in (out / "distilled" / "seed-0" / "metrics.jsonl").open()]
        assert all(r["hidden"] > 0 for r in log if r["kind"] == "train")
        assert json.loads((out / "metrics.json").read_text())["hidden_weight"] == 1


def test_hidden_state_distillation_reaches_every_seed(tmp_path, shared_data, tiny_model, capsys):
    """The hidden-state teacher is loaded once and shared: the second seed learns its states as the first does."""
    from bort.cli import main

    out = tmp_path / "rte"
    assert main(["finetune", "--task", "rte", "--data-dir", str(shared_data), "--max-steps", "2", "--batch-size", "4",
                 "--max-seq-len", "32", "--max-train-samples", "16", "--no-latency", "--quiet", "--model",
                 str(tiny_model), "--output", str(out), "--teacher-from", str(tiny_model), "--hidden-weight", "1",
                 "--seeds", "0", "1"]) == 0
    for seed in (0, 1):
        log = [json.loads(line) for line in (out / "distilled" / f"seed-{seed}" / "metrics.jsonl").open()]
        assert all(r["hidden"] > 0 for r in log if r["kind"] == "train")


def test_finetune_with_a_teacher_distils_from_its_outputs(tmp_path, shared_data, tiny_model, capsys):
    from bort.cli import main

    common = ["finetune", "--task", "rte", "--data-dir", str(shared_data), "--max-steps", "3", "--batch-size", "4",
              "--max-seq-len", "32", "--max-train-samples", "16", "--no-latency", "--quiet", "--model",
              str(tiny_model)]
    assert main([*common, "--output", str(tmp_path / "plain")]) == 0
    assert main([*common, "--output", str(tmp_path / "made-teacher"), "--teacher-from", str(tiny_model)]) == 0
    made = json.loads((tmp_path / "made-teacher" / "metrics.json").read_text())
    teacher = tmp_path / "made-teacher" / "teacher"
    assert made["teacher"] == str(teacher) and "accuracy" in made["teacher_dev"] and "distilled" in made
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "made-teacher" / "distilled" / "seed-0")
    capsys.readouterr()
    # alpha 1 ignores the teacher's outputs: the same batches and weights as plain fine-tuning
    assert main([*common, "--output", str(tmp_path / "alpha1"), "--teacher", str(teacher), "--alpha", "1"]) == 0
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "plain").state_dict()
    same = AutoModelForSequenceClassification.from_pretrained(tmp_path / "alpha1").state_dict()
    assert all(torch.allclose(plain[k], same[k], atol=1e-6) for k in plain)
    assert main([*common, "--output", str(tmp_path / "kd"), "--teacher", str(teacher), "--alpha", "0"]) == 0
    assert json.loads((tmp_path / "kd" / "metrics.json").read_text())["teacher_dev"] == made["teacher_dev"]
    kd = AutoModelForSequenceClassification.from_pretrained(tmp_path / "kd").state_dict()
    assert not all(torch.allclose(plain[k], kd[k], atol=1e-6) for k in plain)
    log = [json.loads(line) for line in (tmp_path / "kd" / "distilled" / "seed-0" / "metrics.jsonl").open()]
    assert all("kd" in r and "gold" in r for r in log if r["kind"] == "train")
    capsys.readouterr()
    code = main([*common[:2], "cb", *common[3:], "--output", str(tmp_path / "cb"), "--teacher", str(teacher)])
    text = capsys.readouterr().err
    assert code == 2 and "label set (entailment, not_entailment) differs from task CB" in text
    assert not (tmp_path / "cb").exists()


def test_augmentation_adds_teacher_labelled_points_once_for_every_seed(tmp_path, shared_data, tiny_model, capsys):
    """--augment 2: twice the train set in new points, each from a train point and with the teacher's soft outputs,
    trained on with the train set; made once, reused by a resumed run, and a changed setting is refused."""
    from bort.cli import main

    out = tmp_path / "aug"
    args = ["finetune", "--task", "rte", "--data-dir", str(shared_data), "--epochs", "1", "--batch-size", "8",
            "--max-seq-len", "32", "--max-train-samples", "16", "--no-latency", "--quiet", "--model", str(tiny_model),
            "--output", str(out), "--teacher-from", str(tiny_model), "--augment", "2", "--band", "0", "0.9999",
            "--seeds", "0", "1"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "augmented.jsonl").open()]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(rows) == metrics["n_augmented"] == 32 and metrics["n_train"] == 16
    assert all(len(r["soft"]) == 2 and r["example"]["label"] in ("entailment", "not_entailment")
               and r["example"]["text"] + (r["example"]["pair"] or "") != r["source"]["text"] + r["source"]["pair"]
               for r in rows)
    for seed in (0, 1):  # every seed trains one pass over the 48 points: 6 steps of 8
        assert json.loads((out / "distilled" / f"seed-{seed}" / "metrics.json").read_text())["steps"] == 6
    mtime = (out / "augmented.jsonl").stat().st_mtime
    assert main([*args, "--resume"]) == 0 and (out / "augmented.jsonl").stat().st_mtime == mtime
    capsys.readouterr()
    assert main([*args[:args.index("--augment") + 1], "3", *args[args.index("--augment") + 2:], "--resume"]) == 2
    assert "--augment 3.0 now, 2.0 then" in capsys.readouterr().err
