"""Worker for tests/integrations/test_callback.py: IlaCallback in a DDP run (torchrun, 2
processes, gloo).

A transformers Trainer trains a peft LoRA adapter of the tiny Llama (``MODEL_DIR``, 2
examples per process and step); IlaCallback ranks at "stable" (its nested stage-2
Trainer is a second DDP run inside the first) and freezes the bottom half. Each process
writes what it saw into ``OUT/result-<rank>.json``: the step it ranked at, the raw gate
scores, whether the frozen units' LoRA weights moved after the ranking and how many of
the others did, and a checksum of its LoRA weights at the end.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import ila
from ila.config import Stage1Config, Stage2Config
from ila.data import PaddingCollator, load_examples
from ila.data.tokenization import tokenize_examples


class Snapshot(TrainerCallback):
    """The LoRA weights right after the ranking (IlaCallback logs first)."""

    def __init__(self, ranker: ila.IlaCallback) -> None:
        self.ranker = ranker
        self.weights: dict[str, torch.Tensor] = {}

    def on_log(self, args, state, control, model=None, **kwargs):
        if not self.weights and self.ranker.scores is not None:
            self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}


def main(model_dir: str, out: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = load_examples("ila-instruct", limit=40)
    features = tokenize_examples(examples, tokenizer, max_length=64).features
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora)
    ranker = ila.IlaCallback(
        at="stable",
        stage1=Stage1Config(window=2, patience=1, min_steps=2, epsilon=0.9, rank_epsilon=0.5),
        stage2=Stage2Config(steps=4, grad_accum=1, init_score=0.0),
        then="freeze-bottom",
        fraction=0.5,
    )
    snapshot = Snapshot(ranker)
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=2,
        max_steps=12,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        ddp_find_unused_parameters=True,
    )
    collator = PaddingCollator(tokenizer.pad_token_id)
    Trainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=collator,
        callbacks=[ranker, snapshot],
    ).train()
    lora_weights = {n: p.detach() for n, p in model.named_parameters() if "lora_" in n}
    frozen = [n for n in lora_weights if any(f".{u}.lora_" in n for u in ranker.selection.frozen)]
    moved = {n: not torch.equal(w, snapshot.weights[n]) for n, w in lora_weights.items()}
    result = {
        "step": ranker.ranked_step,
        "world_size": args.world_size,
        "raw": [u.raw for u in ranker.scores.units],
        "frozen_moved": any(moved[n] for n in frozen),
        "others_moved": sum(moved[n] for n in lora_weights if n not in frozen),
        "others": len(lora_weights) - len(frozen),
        "lora_sum": float(sum(w.double().sum() for w in lora_weights.values())),
    }
    rank = os.environ["RANK"]
    Path(out, f"result-{rank}.json").write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
