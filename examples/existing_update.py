"""Rank the fine-tune you already have, three ways, on the embedded model (a few minutes on
a laptop CPU). docs/usage.md, "Rank the fine-tune you already have"; docs/method.md, "ILA on an
update you already have".

1. A plain peft LoRA fine-tune in a plain transformers Trainer, ranked by ila.IlaCallback
   when training ends (files in <output>/trainer/ila/).
2. The adapter that fine-tune saved, ranked afterwards with ila.score(from_adapter=...).
3. A base/aligned pair made by a short full fine-tune (merged into a model directory),
   ranked with ila.score(from_model=...).

Usage: python examples/existing_update.py [OUTPUT_DIR]   (default runs/existing-example)
"""

from __future__ import annotations

import sys
from pathlib import Path

import ila

SMALL = {"limit": 80, "max_length": 64, "batch_size": 4, "device": "cpu"}
QUICK_STAGE2 = {"stage2_steps": 10, "stage2_grad_accum": 1}


def peft_finetune_with_callback(out: Path) -> Path:
    """A LoRA fine-tune written with plain transformers + peft; returns the adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from ila.config import Stage2Config
    from ila.data import PaddingCollator, load_examples
    from ila.data.tokenization import tokenize_examples
    from ila.model.loading import load_model

    model, tokenizer = load_model("smollm2-135m", device="cpu")
    rows = tokenize_examples(load_examples("ila-instruct", limit=80), tokenizer, max_length=64)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"])
    peft_model = get_peft_model(model, lora)
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=4,
        max_steps=20,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        remove_unused_columns=False,
    )
    callback = ila.IlaCallback(stage2=Stage2Config(steps=10, grad_accum=1))
    trainer = Trainer(
        model=peft_model,
        args=args,
        train_dataset=list(rows.features),
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        callbacks=[callback],
    )
    trainer.train()
    peft_model.save_pretrained(out / "adapter")
    return out / "adapter"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/existing-example")
    adapter = peft_finetune_with_callback(out)
    ranked_live = out / "trainer" / "ila"
    print("1. ranked by the callback:", ranked_live)

    by_adapter = ila.score(
        "smollm2-135m",
        output_dir=out / "from-adapter",
        from_adapter=str(adapter),
        overwrite=True,
        **SMALL,
        **QUICK_STAGE2,
    )
    print("2. from the saved adapter, top units:", by_adapter.scores.top(0.1)[:5])

    full = ila.finetune(
        "smollm2-135m",
        output_dir=out / "full-finetune",
        all_units=True,
        method="full",
        merge=True,
        max_steps=10,
        overwrite=True,
        **SMALL,
    )
    by_pair = ila.score(
        "smollm2-135m",
        output_dir=out / "from-model",
        from_model=str(full.output_dir / "merged"),
        overwrite=True,
        **SMALL,
        **QUICK_STAGE2,
    )
    print("3. from the base/aligned pair, top units:", by_pair.scores.top(0.1)[:5])


if __name__ == "__main__":
    main()
