"""What every ila trainer shares, supervised or preference: a loss that may carry an extra
term (stage 2's budget), a stage's own optimizer or learning-rate schedule, and what a DPO
stage needs. :mod:`ila.train.trainer` (supervised stages) and :mod:`ila.train.preference`
(TRL's DPOTrainer) both build on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ExtraLossMixin", "PreferenceTraining", "StageSchedule"]


@dataclass(frozen=True)
class StageSchedule:
    """What a stage sets in place of the Trainer's own optimizer and schedule (None: keep).

    ``optimizer`` builds the optimizer from the trainable parameters (stage 2's
    ``--stage2-optimizer adam-shared``, ila.core.gate_optimizer); ``lr_factor`` is a
    LambdaLR factor of the optimizer step (stage 1's cool-down, ila.core.cooldown).
    """

    optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer] | None = None
    lr_factor: Callable[[int], float] | None = None


class ExtraLossMixin:
    """A Trainer (or TRL trainer) whose loss may carry an extra term (the stage-2 budget),
    and whose optimizer or learning-rate schedule a stage may set (:class:`StageSchedule`).

    ``extra_loss`` is called once per forward pass and added to the loss; it must return a
    scalar tensor on the loss's device. With ``eval_mode`` the model runs its forward and
    backward passes in eval mode (no dropout): the Trainer switches it to train mode at
    every step, so the switch back happens right before the loss.
    """

    def __init__(
        self,
        *args: Any,
        extra_loss: Callable[[], torch.Tensor] | None = None,
        eval_mode: bool = False,
        stage_schedule: StageSchedule | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.extra_loss = extra_loss
        self.eval_mode = eval_mode
        self.stage_schedule = stage_schedule or StageSchedule()

    def create_optimizer(self, model=None):
        make = self.stage_schedule.optimizer
        if make is not None and self.optimizer is None:
            opt_model = self.model if model is None else model
            self.optimizer = make([p for p in opt_model.parameters() if p.requires_grad])
        return super().create_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        factor = self.stage_schedule.lr_factor
        if factor is not None and self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, factor
            )
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.eval_mode:
            model.eval()
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if self.extra_loss is None:
            return result
        loss, outputs = result if return_outputs else (result, None)
        extra = self.extra_loss().to(loss.device)
        # Under gradient accumulation the Trainer divides the loss by the number of
        # micro-batches unless the loss is already scaled for it (the rule of
        # Trainer.training_step); the extra term must count once per step either way.
        if self._loss_scaled_for_ga(num_items_in_batch):
            extra = extra / self.args.gradient_accumulation_steps
        loss = loss + extra
        return (loss, outputs) if return_outputs else loss

    def _loss_scaled_for_ga(self, num_items_in_batch: Any) -> bool:
        declared = getattr(self, "loss_is_scaled_for_ga", None)
        if declared is not None:
            return bool(declared)
        accepts = getattr(self, "model_accepts_loss_kwargs", False)
        return (accepts and num_items_in_batch is not None) or self.compute_loss_func is not None


@dataclass(frozen=True)
class PreferenceTraining:
    """What a ``--objective dpo`` stage needs besides the model: the tokenizer TRL
    tokenizes the rows with, DPO's beta and the longest prompt plus reply kept."""

    tokenizer: Any
    beta: float
    max_length: int
