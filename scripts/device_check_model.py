"""The model and data of the prepared GPU check (docs/distributed.md, "The prepared GPU check").

No weights are downloaded: a Llama is built from a config with random weights and saved
with ``save_pretrained`` beside a tokenizer trained here, so the check runs on a machine
with no network. Two sizes:

- ``1b``: the shapes of Llama-3.2-1B (hidden 2048, 16 blocks, MLP 8192, 32 query and
  8 key-value heads, vocabulary 128,256, tied embeddings; 1.24 B parameters), saved in
  bfloat16, built on the GPU when there is one;
- ``tiny``: the 4-block Llama of tests/conftest.py (hidden 32), for the CPU rehearsal.

The tokenizer is a byte-level BPE with a ChatML template, trained on the texts of the
embedded ``ila-instruct`` data. Its vocabulary (at most 2,048 pieces) is smaller than the
1B model's, so the rows above it are never read; the LM head still computes all
128,256 logits, as Llama-3.2-1B does. The data file holds ``ila-instruct`` exchanges
joined into long conversations, so that every example is cut at ``--max-length`` and every
batch holds exactly ``batch_size x max_length`` tokens: the token count ``ila plan``
assumes.

    python scripts/device_check_model.py --size 1b --out DIR [--max-length 1024]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 2048
# Llama-3.2-1B's shapes (its published config.json), without its weights.
LLAMA_1B = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 4096,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
}
# tests/conftest.py's tiny Llama (its vocabulary is the tokenizer's).
LLAMA_TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}
SIZES = {"1b": LLAMA_1B, "tiny": LLAMA_TINY}


def instruct_records() -> list[dict[str, Any]]:
    """The embedded ila-instruct records (``messages`` format), read from the package."""
    from importlib.resources import files

    text = files("ila").joinpath("resources", "ila_instruct.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def train_tokenizer(records: list[dict[str, Any]]) -> Any:
    """A byte-level BPE (at most :data:`VOCAB` pieces) with ChatML tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [m["content"] for r in records for m in r["messages"]]
    tok.train_from_iterator(["user", "assistant", "system", *texts], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHATML
    return fast


def long_conversations(
    records: list[dict[str, Any]], *, count: int, exchanges: int, seed: int = 0
) -> list[dict[str, Any]]:
    """``count`` conversations of ``exchanges`` ila-instruct exchanges each (drawn with a
    fixed seed), as ``messages`` records."""
    rng = random.Random(seed)
    return [
        {"messages": [m for r in rng.sample(records, exchanges) for m in r["messages"]]}
        for _ in range(count)
    ]


def build_model(size: str, vocab_size: int, tokenizer: Any) -> Any:
    """A randomly initialised Llama of ``size`` (bfloat16 on the GPU for ``1b``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(SIZES[size])
    shape.setdefault("vocab_size", vocab_size)
    config = LlamaConfig(
        **shape,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    device = "cuda" if size == "1b" and torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16) if size == "1b" else model


def write_model_and_data(out: Path, *, size: str, max_length: int, count: int) -> dict[str, Any]:
    """Save the model and tokenizer to ``out/model`` and the data to ``out/data.jsonl``;
    returns what was written (the ``model`` section of the check's summary)."""
    records = instruct_records()
    tokenizer = train_tokenizer(records)
    model = build_model(size, len(tokenizer), tokenizer)
    model_dir = out / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    # An exchange is at least 16 tokens with this tokenizer, so each conversation is cut.
    exchanges = min(len(records), max(4, max_length // 8))
    rows = long_conversations(records, count=count, exchanges=exchanges)
    data = out / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    shape = model.config
    return {
        "size": size,
        "path": str(model_dir),
        "data": str(data),
        "examples": count,
        "exchanges_per_example": exchanges,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "vocab_size": shape.vocab_size,
        "tokenizer_vocab": len(tokenizer),
        "hidden_size": shape.hidden_size,
        "num_blocks": shape.num_hidden_layers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per example")
    parser.add_argument("--examples", type=int, default=400, help="conversations to write")
    parser.add_argument("--json", type=Path, help="also write what was built to this file")
    args = parser.parse_args(argv)
    if args.max_length < 16 or args.examples < 10:
        print("device_check_model: pass --max-length >= 16 and --examples >= 10", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    built = write_model_and_data(
        args.out, size=args.size, max_length=args.max_length, count=args.examples
    )
    if args.json is not None:
        args.json.write_text(json.dumps(built, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(built))
    return 0


if __name__ == "__main__":
    sys.exit(main())
