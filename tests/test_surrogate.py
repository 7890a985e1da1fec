"""Surrogate error ê: real distillation runs on tiny students, both teacher kinds, deterministic."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import save_tiny_bert

from bort.config import ExtractConfig
from bort.distill.data import iter_packed_rows, mask_tokens, read_documents
from bort.engine.distillation import hidden_distance, load_teacher
from bort.families.bert import BertFamily
from bort.search.surrogate import DistillationSurrogate

FAST = ExtractConfig(batch_size=4, seed=0)


@pytest.fixture(scope="module")
def minilm():
    return load_teacher()


@pytest.fixture(scope="module")
def sequences(minilm, wiki_text):
    rows = iter_packed_rows(read_documents([wiki_text]), minilm.tokenizer, 32)
    return torch.tensor([next(rows) for _ in range(80)])


@pytest.fixture(scope="module")
def mlm_teacher_dir(tmp_path_factory):
    """A small BERT with an MLM head and the real WordPiece tokenizer, saved as a Hugging Face folder."""
    return save_tiny_bert(tmp_path_factory.mktemp("mlm-teacher"), layers=2, heads=4, hidden=64, intermediate=128,
                          positions=512)


def test_hidden_state_surrogate_is_deterministic_and_learns(minilm, sequences):
    surrogate = DistillationSurrogate(BertFamily(), minilm, sequences, FAST, eval_sequences=16)
    arch = (1, 6, 192, 192)
    first = surrogate(arch, {"lr": 1e-3}, 6, seed=3)
    assert first == surrogate(arch, {"lr": 1e-3}, 6, seed=3)
    assert 0 < first < 20
    assert surrogate(arch, {"lr": 1e-3}, 30, seed=3) < surrogate(arch, {"lr": 1e-3}, 1, seed=3)


def test_surrogate_measures_what_pretrain_trains(minilm, sequences):
    """ê is the held-out value of the very objective `bort pretrain` optimises: the MLM term, the learned
    projection (also when the widths are equal) and the pooled term are all in it."""
    from bort.distill.init import student_objective

    surrogate = DistillationSurrogate(BertFamily(), minilm, sequences, FAST, eval_sequences=16)
    objective, _ = student_objective(BertFamily().config((1, 6, 384, 192)), minilm, FAST, seed=0)
    assert isinstance(objective.projection, torch.nn.Linear) and objective.config.mlm_weight == 0.1
    batch = next(surrogate.plan.eval_batches(0, 1))
    terms = objective(batch, objective.targets(batch))
    assert {"mlm", "hidden", "pooled"} <= set(terms)
    assert terms["loss"].item() == pytest.approx((0.1 * terms["mlm"] + terms["hidden"] + terms["pooled"]).item(),
                                                 rel=1e-5)


def test_logit_surrogate_uses_the_bort_loss(mlm_teacher_dir, sequences):
    teacher = load_teacher(mlm_teacher_dir)
    assert teacher.has_mlm_head
    family = BertFamily(mlm_teacher_dir)
    surrogate = DistillationSurrogate(family, teacher, sequences, FAST, eval_sequences=16)
    error = surrogate((1, 2, 32, 64), {"lr": 1e-3}, 3, seed=0)
    assert error > 0 and error == surrogate((1, 2, 32, 64), {"lr": 1e-3}, 3, seed=0)


def test_hidden_losses():
    t = torch.randn(2, 4, 8)
    assert hidden_distance(t, t, "mse").item() == pytest.approx(0.0, abs=1e-7)
    mean = t.mean(dim=(0, 1), keepdim=True).expand_as(t)
    assert hidden_distance(mean, t, "mse").item() == pytest.approx(1.0, rel=1e-5)
    assert hidden_distance(t, t, "cosine").item() == pytest.approx(0.0, abs=1e-6)


def test_masking_proportions(minilm):
    ids = torch.randint(1000, 20000, (64, 128))
    inputs, labels = mask_tokens(ids, minilm.tokenizer, 0.15, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert 0.13 < chosen.float().mean().item() < 0.17
    masked = (inputs == minilm.tokenizer.mask_token_id) & chosen
    assert 0.75 < masked.sum().item() / chosen.sum().item() < 0.85
    assert torch.equal(labels[chosen], ids[chosen])


def test_corpus_decoding_never_crashes(tmp_path, minilm):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 na\xefve ".encode("latin-1") * 200)
    (tmp_path / "utf8.md").write_text("naïve café " * 200, encoding="utf-8")
    rows = list(iter_packed_rows(read_documents([tmp_path]), minilm.tokenizer, 16))
    assert len(rows[0]) == 16 and all(r[0] == minilm.tokenizer.cls_token_id for r in rows)


def test_source_init_starts_closer_to_the_teacher(minilm, sequences):
    """Sliced candidates (DynaBERT-style) begin far closer to the teacher than random ones."""
    family = BertFamily()
    random_init = DistillationSurrogate(family, minilm, sequences, FAST, eval_sequences=16)
    sliced_config = ExtractConfig(batch_size=4, init="source")
    sliced = DistillationSurrogate(family, minilm, sequences, sliced_config, eval_sequences=16)
    arch = (2, 6, 192, 384)
    assert sliced(arch, {"lr": 1e-4}, 1, seed=0) < random_init(arch, {"lr": 1e-4}, 1, seed=0)
    no_mlm = ExtractConfig(batch_size=4, init="source", mlm_weight=0.0)
    full = (6, 12, 384, 1536)  # the whole source, sliced whole: the teacher itself
    whole = DistillationSurrogate(family, minilm, sequences, no_mlm, eval_sequences=16)
    assert whole(full, {"lr": 1e-9}, 1, seed=0) < 1e-3
