"""A loaded model passed as ``model=`` is saved under a name that covers its tokenizer too
(probe case A11): the same weights with another tokenizer are another cached folder, never
the tokenizer saved first; ``tokenizer=`` must be a tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from conftest import build_tiny_tokenizer
from ila.api import model_source
from ila.errors import IlaError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ILA_CACHE_DIR", str(tmp_path / "cache"))


def test_another_tokenizer_with_the_same_weights_is_another_folder(tiny_llama):
    plain = build_tiny_tokenizer()
    plain.chat_template = None
    first = Path(model_source(tiny_llama, plain))
    assert AutoTokenizer.from_pretrained(first).chat_template is None
    again = build_tiny_tokenizer()
    again.chat_template = None
    assert Path(model_source(tiny_llama, again)) == first  # only the template differs below
    chat = build_tiny_tokenizer()  # the same vocabulary, with its ChatML template
    second = Path(model_source(tiny_llama, chat))
    assert second != first
    assert "im_start" in AutoTokenizer.from_pretrained(second).chat_template
    extra = build_tiny_tokenizer()
    extra.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    assert Path(model_source(tiny_llama, extra)) not in (first, second)


def test_the_same_tokenizer_is_the_same_folder_also_after_use_and_reload(tiny_llama):
    tokenizer = build_tiny_tokenizer()
    path = model_source(tiny_llama, tokenizer)
    tokenizer(["the answer is five"] * 2, truncation=True, max_length=3, padding="max_length")
    assert model_source(tiny_llama, tokenizer) == path  # per-call state is not identity
    assert model_source(tiny_llama, AutoTokenizer.from_pretrained(path)) == path


def test_a_model_passed_as_its_own_tokenizer_is_refused(tiny_llama):
    with pytest.raises(IlaError, match=r"^tokenizer must be a transformers tokenizer .*LlamaFor"):
        model_source(tiny_llama, tiny_llama)
