"""Preference pairs judged by their tokens: replies that give the same token ids carry no
preference and are refused with their file and line (README: "a pair whose two replies are
equal ... is refused"); pairs alike up to --max-length are counted, and refused when all are.

The tokenizer here is a real word-level one (tokenizers' WordLevel with white-space
splitting), as the probe's fixture had: it drops trailing spaces and maps unknown words to
one id, so different texts can give the same tokens.
"""

from __future__ import annotations

import json
import logging

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from conftest import build_tiny_llama, fails
from ila.data.preference import load_preference_pairs, preference_rows
from ila.errors import IlaError

WORDS = ["what", "is", "two", "plus", "three", "the", "answer", "five", "six", "###", "user:"]
WORDS += ["assistant:", "<eos>", "<pad>", "[UNK]"]


def _word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {word: i for i, word in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="[UNK]"
    )


def _pairs_file(path, last_rejected: str):
    rows = [
        {"prompt": "what is two plus three", "chosen": "five", "rejected": "six"},
        {"prompt": "what is two plus three", "chosen": "the answer is five", "rejected": "six"},
        {
            "prompt": "what is two plus three",
            "chosen": "the answer is five",
            "rejected": last_rejected,
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_replies_of_the_same_tokens_are_refused_with_their_line(tmp_path):
    path = _pairs_file(tmp_path / "pairs.jsonl", "the answer is five ")  # a trailing space
    pairs = load_preference_pairs(str(path))  # the texts differ: accepted as text
    with pytest.raises(IlaError, match=r"pairs\.jsonl:3: 'chosen' and 'rejected' give the same"):
        preference_rows(pairs, _word_tokenizer(), template="plain")
    control = _pairs_file(tmp_path / "control.jsonl", "the answer is six")
    rows = preference_rows(load_preference_pairs(str(control)), _word_tokenizer())
    assert len(rows) == 3


def test_unknown_words_that_map_to_one_id_are_refused(tmp_path):
    path = tmp_path / "unknown.jsonl"
    rows = [
        {"prompt": "what is two plus three", "chosen": "five", "rejected": "six"},
        {"prompt": "what is two plus three", "chosen": "cinq", "rejected": "sechs"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(IlaError, match=r"unknown\.jsonl:2: .*same .* tokens.*no preference"):
        preference_rows(load_preference_pairs(str(path)), _word_tokenizer(), template="plain")


def test_pairs_alike_up_to_max_length_are_counted_and_refused_when_all(tiny_tokenizer, caplog):
    pairs = load_preference_pairs("ila-preference", limit=12)
    with caplog.at_level(logging.WARNING, logger="ila"):
        rows = preference_rows(pairs, tiny_tokenizer, max_length=64)
    assert len(rows) == 12
    counted = [r.getMessage() for r in caplog.records if "differ only after" in r.getMessage()]
    assert len(counted) == 1 and "of the 12 preference pairs" in counted[0]
    with pytest.raises(IlaError, match=r"^all 12 of the 12 .*max_length 8 .*raise max_length"):
        preference_rows(pairs, tiny_tokenizer, max_length=8)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ila"):
        preference_rows(pairs, tiny_tokenizer, max_length=512)
    assert not caplog.records


def test_score_refuses_token_alike_pairs_before_the_run_starts(tmp_path, capsys):
    model_dir = tmp_path / "word-model"
    tok = _word_tokenizer()
    build_tiny_llama(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    path = _pairs_file(tmp_path / "pairs.jsonl", "the answer is five ")
    out = tmp_path / "run"
    argv = ["score", "--model", str(model_dir), "--objective", "dpo", "--data", str(path)]
    argv += ["--eval-fraction", "0", "--template", "plain", "--output-dir", str(out)]
    fails(argv, capsys, "pairs.jsonl:3", "same", "no preference")
    assert not out.exists()
