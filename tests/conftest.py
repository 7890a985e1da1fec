"""Shared fixtures. Real data comes from ../shared/data beside the repository; tests that need it fail
loudly when it is missing (set BORT_SHARED_DATA to point elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BORT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.fail(f"real test data not found at {SHARED_DATA}; clone next to ../shared or set BORT_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def wiki_text(shared_data: Path) -> Path:
    return shared_data / "text" / "wikitext-2" / "wiki.valid.tokens"


@pytest.fixture(autouse=True)
def _offline_and_private_cache(tmp_path_factory, monkeypatch):
    """No test reaches the hub, and latency caches stay inside the test's temp folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("BORT_CACHE", str(tmp_path_factory.getbasetemp() / "bort-cache"))


def save_tiny_bert(folder: Path, layers: int = 1, heads: int = 2, hidden: int = 32, intermediate: int = 64,
                   positions: int = 128) -> Path:
    """A small BERT with an MLM head, seeded, and the real MiniLM tokenizer: fast, and the vocabulary is real."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from bort.io import default_source, load_tokenizer

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=positions,
                        architectures=["BertForMaskedLM"])
    BertForMaskedLM(config).save_pretrained(folder)
    load_tokenizer(default_source()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 1-layer BERT with an MLM head and the real MiniLM tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
