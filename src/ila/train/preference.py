"""Preference optimisation stages (``--objective dpo``) through TRL's DPOTrainer.

docs/method.md, "Preference optimisation": with ``--objective dpo`` each stage minimises
the DPO loss of the policy against a fixed reference instead of the next-token loss. ila
does not write the loss: it runs TRL's ``DPOTrainer`` (pinned in constraints.txt, the
``dpo`` extra) with the stage's own TrainingArguments, callbacks, extra loss (the stage-2
budget) and eval mode, through :class:`ila.train.trainer.ExtraLossMixin`.

The reference is the model without the stage's update: peft's adapters disabled, i.e.
theta_0 for stage 1 (LoRA on every unit), for stage 2 (the gated update) and for a LoRA
fine-tune. TRL copies an existing adapter into a frozen ``ref`` adapter by default, which
in stage 2 would make the reference the stage-1 policy; ila removes that copy, so TRL
computes reference log-probabilities with the adapters disabled. Stages without an
adapter (a full fine-tune) are refused before they start (ila.jobs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments

from ila.config import setting
from ila.errors import IlaError
from ila.progress import progress_bars_enabled
from ila.train.base import ExtraLossMixin, PreferenceTraining, StageSchedule

__all__ = ["dpo_trainer"]


def dpo_trainer(
    model: torch.nn.Module,
    args: TrainingArguments,
    *,
    rows: Sequence[dict[str, Any]],
    preference: PreferenceTraining,
    callbacks: Sequence[TrainerCallback] = (),
    extra_loss: Callable[[], torch.Tensor] | None = None,
    eval_mode: bool = False,
    stage_schedule: StageSchedule | None = None,
) -> Any:
    """A DPOTrainer for ``model`` (a peft model) on preference ``rows`` (TRL's text layout:
    ``prompt``, ``chosen``, ``rejected``; ila.data.preference.preference_rows)."""
    try:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer
    except ImportError as exc:  # the dpo extra is not installed
        raise IlaError(
            setting("train", "objective"), " dpo needs TRL: pip install 'ila[dpo]' (trl==1.16.0)"
        ) from exc
    if not hasattr(model, "disable_adapter"):
        raise IlaError(
            setting("train", "objective"),
            " dpo trains a LoRA adapter and uses the model without it as the "
            "reference; a full fine-tune has no adapter to disable",
        )

    if not progress_bars_enabled():  # TRL tokenizes with datasets.map, which shows bars
        import datasets

        datasets.disable_progress_bars()

    class IlaDPOTrainer(ExtraLossMixin, DPOTrainer):
        """TRL's DPOTrainer with ila's extra loss term and eval mode."""

    settings = {k: v for k, v in args.to_dict().items() if not k.startswith("_")}
    settings.pop("push_to_hub_token", None)
    settings.update(
        beta=preference.beta,
        max_length=preference.max_length,
        truncation_mode="keep_start",  # as supervised data: cut from the right
        gradient_checkpointing=False,  # ila does not turn it on (docs/plan.md)
        precompute_ref_log_probs=False,
    )
    config = DPOConfig(**settings)
    trainer = IlaDPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list([dict(row) for row in rows]),
        processing_class=preference.tokenizer,
        callbacks=list(callbacks),
        extra_loss=extra_loss,
        eval_mode=eval_mode,
        stage_schedule=stage_schedule,
    )
    if "ref" in getattr(model, "peft_config", {}):
        # TRL's copy of the adapter as the reference; ila's reference is the model without
        # the adapter (module docs), which TRL uses when no "ref" adapter exists.
        model.delete_adapter("ref")
    return trainer
