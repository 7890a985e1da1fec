"""The cost model: analytic counts equal the built models, exhaustively over the built-in spaces."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModel

from bort.errors import BortError
from bort.families import Space, get_family, parse_arch
from bort.families.bert import BertFamily
from bort.search.extraction import BUILTIN_SPACES, load_space


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_numel(family, arch) -> int:
    """Parameter count of the really built model, on the meta device so even BERT-large is instant."""
    with torch.device("meta"):
        return numel(family.build(arch))


def test_mlp_reproduces_the_article():
    mlp = get_family("mlp")
    assert mlp.cost((2, 4, 3, 4, 4)).params == 72
    assert mlp.cost((2, 3, 3, 3, 2)).params == 40
    assert numel(mlp.build((2, 4, 3, 4, 4))) == 72
    assert numel(mlp.build((2, 3, 3, 3, 2))) == 40


def test_bert_large_with_pooler():
    family = get_family("bert", source="bert-large")
    assert family.cost(family.maximum()).params == 335_141_888
    assert meta_numel(family, family.maximum()) == 335_141_888


def test_bort_shape_effective_size():
    cost = get_family("bert", source="bort").cost((4, 8, 1024, 768))
    assert (cost.params, cost.effective_params) == (55_941_120, 24_158_208)


@pytest.mark.parametrize("source,space", [("bert-large", "bort-paper"), (None, "default"), ("bert-base", "default")])
def test_counts_match_built_models_on_every_builtin_point(source, space):
    family = get_family("bert", source=source)
    points = load_space(family, space).points(family)
    assert points
    for arch in points:
        assert family.cost(arch).params == meta_numel(family, arch), arch


def test_mlp_default_space_exhaustive():
    family = get_family("mlp")
    for arch in Space.of(family, family.default_space()).points(family):
        assert family.cost(arch).params == numel(family.build(arch))


def test_roberta_shaped_source(tmp_path):
    config = AutoConfig.for_model("roberta", vocab_size=500, max_position_embeddings=66, hidden_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, type_vocab_size=1)
    config.save_pretrained(tmp_path)
    family = BertFamily(tmp_path / "config.json")
    assert family.maximum() == (2, 4, 64, 128)
    assert family.max_seq_len == 64
    for arch in [(1, 2, 32, 16), (2, 4, 64, 128)]:
        assert family.cost(arch).params == numel(family.build(arch))
    reloaded = AutoConfig.from_pretrained(_save(family, (1, 2, 32, 16), tmp_path / "chosen"))
    assert (reloaded.model_type, reloaded.num_hidden_layers, reloaded.hidden_size) == ("roberta", 1, 32)


def _save(family, arch, folder):
    family.config(arch).save_pretrained(folder)
    return folder


@settings(max_examples=25, deadline=None)
@given(D=st.integers(1, 3), heads=st.integers(1, 4), head_dim=st.integers(1, 16), I=st.integers(1, 64),
       vocab=st.integers(10, 300), positions=st.integers(8, 40), types=st.integers(1, 3))
def test_counts_property(D, heads, head_dim, I, vocab, positions, types):
    config = AutoConfig.for_model("bert", vocab_size=vocab, max_position_embeddings=positions, type_vocab_size=types)
    family = BertFamily(config)
    arch = (D, heads, heads * head_dim, I)
    assert family.cost(arch).params == numel(family.build(arch))


@pytest.mark.parametrize("arch", [(2, 4, 64, 128), (3, 8, 256, 96)])
def test_matmul_ops_match_a_flop_counter(arch):
    family = get_family("bert", source="bert-base")
    model = AutoModel.from_config(family.config(arch), attn_implementation="eager").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**family.example_input(arch, 2, 16))
    assert counter.get_total_flops() == family.matmul_ops(arch, 2, 16)
    assert family.cost(arch, 2, 16).ops > family.matmul_ops(arch, 2, 16)


def test_ops_grow_with_shape():
    family = get_family("bert", source="bort")
    small, large = family.cost((4, 8, 1024, 768), 1, 128).ops, family.cost((4, 8, 1024, 768), 2, 128).ops
    assert large == pytest.approx(2 * small, rel=1e-3)


@pytest.mark.parametrize("text,message", [("4,8,1024", "needs 4 values"), ("4,5,1024,768", "H not divisible by A"),
                                          ("a,b,c,d", "not a comma-separated list")])
def test_parse_arch_errors(text, message):
    with pytest.raises(BortError, match=message):
        parse_arch(get_family("bert", source="bort"), text)


def test_unknown_family():
    with pytest.raises(BortError, match="known families: bert, mlp"):
        get_family("lstm")


def test_offline_hub_name_gives_one_line():
    with pytest.raises(BortError, match="cannot load a config from 'bert-base-uncased'.*unreachable.*local model"):
        get_family("bert", source="bert-base-uncased")


def test_space_errors():
    family = get_family("bert", source="bort")
    with pytest.raises(BortError, match="above the source's H=1024"):
        load_space(family, {"D": [2], "A": [4], "H": [2048], "I": [256]})
    with pytest.raises(BortError, match="missing"):
        load_space(family, {"D": [2], "A": [4], "H": [512]})
    assert BUILTIN_SPACES["bort-paper"]["D"] == [2, 4, 6, 8, 10, 12]


def test_cost_cli_json(capsys):
    from bort.cli import main

    assert main(["cost", "--family", "mlp", "--arch", "2,4,3,4,4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["params"], out["effective_params"]) == (72, 72) and out["ops"] > 0
    assert main(["cost", "--source", "bort", "--arch", "4,8,1024,768", "--json", "--measure", "--repeats", "2",
                 "--seq-len", "16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 55_941_120 and out["latency_ms"] > 0 and out["seq_len"] == 16
