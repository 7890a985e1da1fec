"""The command line: flags come from the config dataclasses, mean the same everywhere, and cost nothing to list."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from bort import config as cfg
from bort.cli import COMMANDS, options, parser

# Defaults that differ by purpose, on purpose: pre-training a small model from scratch wants a 10x larger learning
# rate than fine-tuning it; a surrogate run is a short probe (small batches and rows, two learning rates in Θ);
# `bort extract`'s output may be left out (a dated folder), the others' not; `cost` and `bench` measure shapes
# (bench several at once), which is what --batch-size and --seq-len name there.
# `bort run` times what it deploys (measured latency); the hidden-state term is the whole signal of general
# distillation from a teacher without an MLM head, but an optional extra in task distillation (logits carry the task).
PER_PURPOSE = {"--lr", "--warmup", "--batch-size", "--max-seq-len", "--max-steps", "--save-every", "--output",
               "--theta", "--seq-len", "--speed", "--hidden-weight"}


def test_import_and_help_do_not_load_torch():
    code = "import sys, bort, bort.cli; bort.cli.parser().format_help(); print(sorted(m for m in sys.modules if " \
           "m.split('.')[0] in ('torch', 'transformers', 'accelerate')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_config_field_is_a_flag_with_its_help():
    for name, (cls, _) in COMMANDS.items():
        sub = parser()._subparsers._group_actions[0].choices[name]
        dests = {a.dest for a in sub._actions}
        for f in fields(cls):
            assert f.name in dests or not f.metadata.get("cli", True), (name, f.name)
            assert f.metadata["help"], (name, f.name)


def test_a_flag_means_the_same_and_has_the_same_default_in_every_command():
    seen: dict[str, tuple[str, object, object]] = {}
    for name, (cls, _) in COMMANDS.items():
        for f in fields(cls):
            if not f.metadata.get("cli", True):
                continue
            default = cfg.default_of(f)
            flag = cfg.flag_of(f)
            if flag in seen and flag not in PER_PURPOSE:
                other, other_type, other_default = seen[flag]
                assert default == other_default, f"{flag}: {name} {default!r} vs {other} {other_default!r}"
                kind = str(f.type).replace(" | None", "")
                assert kind == other_type, f"{flag}: {name} takes {kind}, {other} {other_type}"
            seen.setdefault(flag, (name, str(f.type).replace(" | None", ""), default))
    assert seen["--hidden-loss"][2] == "mse" and seen["--mixed-precision"][2] == "auto"


def test_config_file_sets_options_and_flags_win(tmp_path):
    settings = tmp_path / "run.yaml"
    settings.write_text("max-steps: 7\nlr: 0.002\ncorpus: [a.txt, b.txt]\nhidden_loss: cosine\n")
    args = parser().parse_args(["pretrain", "--arch", "1,2,32,64", "--output", "o", "--config", str(settings),
                                "--lr", "0.003"])
    got = options(args)
    assert (got.max_steps, got.lr, got.corpus, got.hidden_loss) == (7, 0.003, ["a.txt", "b.txt"], "cosine")
    settings.write_text("max_stepz: 7\n")
    with pytest.raises(cfg.BortError, match="unknown option.*max_stepz"):
        options(parser().parse_args(["pretrain", "--arch", "1,2,32,64", "--output", "o", "--config", str(settings)]))


def test_repeatable_lists_take_both_spellings():
    args = parser().parse_args(["extract", "--corpus", "a", "b", "--corpus", "c"])
    assert options(args).corpus == ["a", "b", "c"]
    args = parser().parse_args(["finetune", "--task", "rte", "--output", "o", "--seeds", "0", "1", "2"])
    assert options(args).seeds == [0, 1, 2]


def test_api_functions_survive_importing_their_subpackages():
    import bort
    import bort.agora.rounds  # noqa: F401 - sets the attribute bort.agora to the subpackage

    assert callable(bort.agora) and callable(bort.extract) and callable(bort.pretrain)


def test_an_option_newer_than_a_run_leaves_its_identity_at_its_default():
    """Runs recorded before --hidden-weight existed (Agora's settings, fine-tune fingerprints) still resume."""
    assert "hidden_weight" not in cfg.AgoraConfig(task="rte", output="o").identity()
    assert cfg.AgoraConfig(task="rte", output="o", hidden_weight=0.5).identity()["hidden_weight"] == 0.5
    assert cfg.PretrainConfig(arch="1,2,32,64", output="o").identity()["hidden_weight"] == 1.0
