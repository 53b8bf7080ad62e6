"""Shared fixtures: tiny config-built models and a tiny trained tokenizer, all offline.

A 4-block Llama with hidden size 32 runs a training step in milliseconds on a CPU, so
behavioural tests of every stage can run end to end. The tokenizer is a byte-level BPE
trained here on a few hundred sentences, with a ChatML chat template like SmolLM2's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "be",
    "by",
    "this",
    "are",
    "answer",
    "question",
    "user",
    "assistant",
    "system",
    "please",
    "reverse",
    "sort",
    "count",
    "letters",
    "words",
    "sum",
    "add",
    "subtract",
    "multiply",
    "number",
    "list",
    "capital",
    "city",
    "country",
    "convert",
    "hello",
    "world",
    "what",
    "how",
    "why",
    "which",
    "write",
    "short",
    "sentence",
    "uppercase",
    "lowercase",
    "vowels",
    "yes",
    "no",
    "true",
    "false",
    "first",
    "last",
    "result",
    "equals",
    "plus",
    "minus",
    "times",
    "divided",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
]


def _corpus() -> list[str]:
    lines = []
    for i, word in enumerate(_CORPUS_WORDS):
        nxt = _CORPUS_WORDS[(i * 7 + 3) % len(_CORPUS_WORDS)]
        lines.append(f"{word} {nxt} {i} {i * 13 % 97}. Answer: {word.upper()}!")
    lines.append("0123456789 +-*/=()[]{}<>:;,.?!'\"\n")
    return lines * 3


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ~400) with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_llama(vocab_size: int, *, num_layers: int = 4, seed: int = 0):
    """A randomly initialised 4-block Llama (hidden 32, 4 heads, 2 KV heads)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture()
def tiny_llama(tiny_tokenizer):
    return build_tiny_llama(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny Llama and its tokenizer saved as an ordinary local model directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(len(tiny_tokenizer)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory) -> Path:
    """ILA_CACHE_DIR for the embedded model in tests: converted once per session, in tmp."""
    return tmp_path_factory.mktemp("ila-cache")


# Shared by the bad-input tests: a CLI call that must fail cleanly, and a file snapshot.
def fails(argv: list[str], capsys, *words: str) -> str:
    """Run the CLI; assert exit 2, no traceback and one `ila: error:` line with ``words``."""
    from ila.cli import main

    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # A progress bar may share the terminal line (it ends in "\r"), so split on the prefix;
    # the bar's last redraw may follow the message on the next line.
    errors = err.split("ila: error: ")[1:]
    assert len(errors) == 1, err
    message = errors[0].splitlines()[0].strip()
    for word in words:
        assert word in message, message
    return message


def tree(path: Path) -> dict[str, int]:
    """Every file under ``path`` with its modification time, to prove nothing changed."""
    return {
        p.relative_to(path).as_posix(): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()
    }


def fit_gates(model, gated, batch, *, steps: int = 60):
    """Stage 2 by hand on one batch (Adam on the gate scores, the default hinge budget's
    weight and boundary), as the planted-signal tests use it; returns the gate values."""
    import torch

    from ila.config import Stage2Config
    from ila.core.gates import budget_loss

    default = Stage2Config()

    optimizer = torch.optim.Adam([gated.bank.scores], lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(input_ids=batch, labels=batch).loss
        loss = loss + budget_loss(
            gated.bank(),
            kind=default.budget,
            weight=default.budget_weight,
            target_fraction=default.target_fraction,
        )
        loss.backward()
        optimizer.step()
    return gated.gate_values()


def score_tiny_ila(model, tokenizer, out: Path, config, *, limit: int):
    """``score_ila`` on the first ``limit`` ila-instruct examples (max length 64) in ``out``;
    returns the scores and the metrics rows of every step."""
    import json

    from ila.core.layers import find_layers
    from ila.data import PaddingCollator, load_examples
    from ila.data.tokenization import tokenize_examples
    from ila.scorers.base import ScoringContext
    from ila.scorers.ila import score_ila

    features = tokenize_examples(
        load_examples("ila-instruct", limit=limit), tokenizer, max_length=64
    ).features
    ctx = ScoringContext(
        model=model,
        tokenizer=tokenizer,
        layer_map=find_layers(model),
        model_id="tiny",
        train_features=features,
        collator=PaddingCollator(tokenizer.pad_token_id),
        config=config,
        output_dir=out,
        data_fingerprint="x",
    )
    scores = score_ila(ctx)
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    return scores, rows


# Rankings built by hand (no model): 4 module types per block.
TYPES = ["self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj"]


def make_scores(values, *, unit_kind="module", model_id="tiny", model_type="llama", seed=0):
    """Scores of len(values) units (4 module types per block) with these importances."""
    from ila.core.scores import LayerScores, UnitScore

    units, layout_units = [], []
    for i, value in enumerate(values):
        block = i // len(TYPES) if unit_kind == "module" else i
        module_type = TYPES[i % len(TYPES)] if unit_kind == "module" else None
        name = f"layers.{block}.{module_type}" if module_type else f"layers.{block}"
        units.append(UnitScore(name, block, module_type, float(value), float(value)))
        layout_units.append({"name": name, "block": block, "shape": [8, 8]})
    layout = {
        "model_type": model_type,
        "blocks_path": "model.layers",
        "num_blocks": units[-1].block + 1,
        "units": layout_units,
    }
    return LayerScores(
        "ila", model_id, unit_kind, units, layout, {"seed": seed, "data_fingerprint": "f", "T": 5}
    )


def write_score_runs(tmp_path, values_list):
    """One saved run folder (layer_scores.json only) per list of importances."""
    paths = []
    for i, values in enumerate(values_list):
        run = tmp_path / "runs" / f"data{i}"
        run.mkdir(parents=True)
        make_scores(values, seed=i).save(run / "layer_scores.json")
        paths.append(run)
    return paths
