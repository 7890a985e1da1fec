"""`bort extract` end to end through the CLI with the real embedded MiniLM teacher and real text."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import pytest
from transformers import AutoConfig, AutoModel, AutoTokenizer

from bort.cli import main

TINY_SPACE = {"D": [1, 2], "A": [6, 12], "H": [192], "I": [192, 384]}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, wiki_text):
    folder = tmp_path_factory.mktemp("extract")
    space = folder / "space.yaml"
    space.write_text("".join(f"{k}: {v}\n" for k, v in TINY_SPACE.items()))
    out = folder / "run"
    bort = shutil.which("bort")
    assert bort, "the bort console script is not installed; pip install -e ."
    done = subprocess.run([bort, "extract", "--space", str(space), "--corpus", str(wiki_text), "--steps", "8",
                           "--theta", "lr=1e-3", "--batch-size", "4", "--max-seq-len", "32", "--max-params", "6.5e6",
                           "--output", str(out)], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def test_outputs(tiny_run):
    out, stdout = tiny_run
    with open(out / "candidates.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:11] == ["D", "A", "H", "I", "params", "effective_params", "ops", "latency_ms",
                                  "surrogate_error", "W", "pareto"]
    assert len(rows) == 8 and all(r["latency_ms"] == "" for r in rows)
    assert {r["pareto"] for r in rows} <= {"true", "false", ""} and any(r["pareto"] == "true" for r in rows)
    at_budget = {r["steps"] for r in rows if r["pareto"]}
    assert at_budget == {"8"} and all(r["pareto"] == "" for r in rows if r["steps"] != "8")
    result = json.loads((out / "result.json").read_text())
    assert result["n"] == 8 and result["space_size"] == 8
    assert set(result["chosen"]["arch"]) == {"D", "A", "H", "I"}
    assert result["chosen"]["params"] <= 6.5e6 and result["target_met"]
    assert 0 < result["chosen"]["ratios_to_source"]["params"] < 1
    assert "W" in result["w_optimum"] and result["seconds"] > 0
    assert (out / "pareto.png").stat().st_size > 10_000
    assert "W-optimal" in stdout and "Pareto front" in stdout


def test_chosen_folder_loads_in_stock_transformers(tiny_run):
    out, _ = tiny_run
    config = AutoConfig.from_pretrained(out / "chosen")
    result = json.loads((out / "result.json").read_text())
    assert config.num_hidden_layers == result["chosen"]["arch"]["D"]
    assert config.hidden_size == 192 and config.model_type == "bert"
    assert AutoTokenizer.from_pretrained(out / "chosen")("a test")["input_ids"][0] == 101
    assert sum(p.numel() for p in AutoModel.from_config(config).parameters()) == result["chosen"]["params"]


def one_line_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_bad_input_gets_one_line(tmp_path, capsys, tiny_run):
    out, _ = tiny_run
    space = tmp_path / "bad.json"
    space.write_text(json.dumps({"D": [2], "A": [5], "H": [192], "I": [192]}))
    assert "no valid architecture (1 x H not divisible by A)" in one_line_error(
        capsys, "extract", "--space", str(space), "--output", str(tmp_path / "a"))
    space.write_text(json.dumps({"D": [2], "A": [6], "H": [768], "I": [192]}))
    assert "above the source's H=384" in one_line_error(capsys, "extract", "--space", str(space))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "corpus is empty" in one_line_error(capsys, "extract", "--corpus", str(empty), "--output",
                                               str(tmp_path / "b"), "--quiet")
    assert "does not exist" in one_line_error(capsys, "extract", "--corpus", str(tmp_path / "missing.txt"),
                                              "--output", str(tmp_path / "c"), "--quiet")
    assert "local model folder" in one_line_error(capsys, "extract", "--source", "bert-base-uncased")
    assert "already holds files; pass --resume" in one_line_error(capsys, "extract", "--output", str(out))
