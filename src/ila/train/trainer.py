"""Glue between the ILA stages and the Hugging Face Trainer.

Every training stage runs on ``transformers.Trainer`` so that gradient accumulation,
bf16 autocast, checkpoints, progress bars, ``--report-to`` integrations and launches with
torchrun / accelerate (DDP; see ila.train.parallel) come from the ecosystem. The algorithm
modules (gates, stability, scores) know nothing of the Trainer; this module drives them.

Per-step values that decide control flow (the stage-1 stability test) are read from the
Trainer's logs, which are averaged over processes, so every rank takes the same decision.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ila.config import TrainConfig, setting
from ila.errors import IlaError
from ila.files import append_jsonl
from ila.progress import StepOutlook, progress_bars_enabled, training_progress
from ila.train.base import ExtraLossMixin, PreferenceTraining, StageSchedule
from ila.train.precision import PrecisionChoice, choose_precision

__all__ = [
    "AfterStep",
    "ExtraLossMixin",
    "IlaTrainer",
    "MetricsLogger",
    "PreferenceTraining",
    "StageSchedule",
    "StepValues",
    "StopWhen",
    "make_training_args",
    "progress_bars_enabled",
    "run_trainer",
    "stage_seed",
    "train_precision",
]


def stage_seed(seed: int, stage: str) -> int:
    """A seed for ``stage`` derived from the run's ``seed``: independent of other stages'.

    Stage 2 draws its own data order with it (docs/method.md, "Stage 2"): with the run's
    seed it would replay stage 1's first batches and dropout masks in the same order.
    """
    digest = hashlib.sha256(f"{seed}:{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1)


def train_precision(train: TrainConfig, device: str) -> PrecisionChoice:
    """The precision the stages train in on ``device`` (ila.train.precision)."""
    from ila.model.loading import resolve_device

    return choose_precision(train.requested_precision, resolve_device(device))


def make_training_args(
    train: TrainConfig,
    *,
    output_dir: Path,
    learning_rate: float,
    max_steps: int,
    warmup_steps: int = 0,
    scheduler: str = "constant_with_warmup",
    device: str = "auto",
    seed: int | None = None,
    grad_accum: int | None = None,
) -> TrainingArguments:
    """TrainingArguments for one ILA stage.

    Logs every step (the stability test needs per-step losses; the metrics file keeps
    them all) while the terminal shows a progress bar only. ``seed`` (default
    ``train.seed``) seeds the data order and the Trainer's RNG; ``grad_accum`` (default
    ``train.grad_accum``) overrides the accumulation steps.
    """
    seed = train.seed if seed is None else seed
    on_cpu = device == "cpu" or not torch.cuda.is_available()
    precision = train_precision(train, device).precision
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum if grad_accum is None else grad_accum,
        learning_rate=learning_rate,
        max_steps=max_steps,
        warmup_steps=warmup_steps,
        lr_scheduler_type=scheduler,
        weight_decay=0.0,
        logging_steps=1,
        # The Trainer's default replaces a NaN/inf step loss by the running mean in its logs;
        # a NaN is a failed run here, so it must reach MetricsLogger as it is.
        logging_nan_inf_filter=False,
        save_strategy="steps" if train.save_steps else "no",
        save_steps=train.save_steps or 500,
        save_total_limit=2,
        report_to=[] if train.report_to == "none" else [train.report_to],
        seed=seed,
        data_seed=seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=on_cpu,
        dataloader_num_workers=0,
        dataloader_pin_memory=not on_cpu,
        remove_unused_columns=False,
        disable_tqdm=not progress_bars_enabled(),
    )


class IlaTrainer(ExtraLossMixin, Trainer):
    """The Hugging Face Trainer with :class:`ExtraLossMixin` (supervised stages)."""


class _BarOnly(ProgressCallback):
    """The Trainer's progress bar without a printed line for every logged step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return


@dataclass
class StepValues:
    """Per-step values collected from the Trainer's logs (identical on every rank)."""

    loss: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)
    unit_values: dict[int, list[float]] = field(default_factory=dict)
    """Per-unit values at some steps (stage 1: update norms at the stopping rule's checks)."""


# TRL's DPO logs (per step, on the training batch) kept in metrics.jsonl under these names.
_PREFERENCE_LOGS = {"rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin"}


class MetricsLogger(TrainerCallback):
    """Collects each step's loss; appends rows to ``metrics.jsonl`` on the main process.

    A non-finite loss stops the run with an error naming the step: a NaN is a failure,
    never a value to continue from.
    """

    def __init__(
        self,
        stage: str,
        metrics_path: Path | None,
        values: StepValues,
        probe: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.stage = stage
        self.metrics_path = metrics_path
        self.values = values
        self.probe = probe
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            raise IlaError(
                f"{self.stage}: the training loss became {loss} at step {state.global_step}; "
                "lower the learning rate, or use ",
                setting("model", "dtype"),
                " float32 instead of float16",
            )
        self.values.loss.append(loss)
        row: dict[str, Any] = {
            "stage": self.stage,
            "step": state.global_step,
            "loss": loss,
            "learning_rate": logs.get("learning_rate"),
            "elapsed_s": round(time.perf_counter() - self.start, 3),
        }
        for source, name in _PREFERENCE_LOGS.items():  # DPO's reward statistics, when logged
            if source in logs:
                self.values.extra.setdefault(name, []).append(float(logs[source]))
                row[name] = float(logs[source])
        if self.probe is not None:
            for key, value in self.probe().items():
                if not math.isfinite(value):
                    # A diverged update (e.g. a huge learning rate) shows here before the loss.
                    raise IlaError(
                        f"{self.stage}: the {key.replace('_', ' ')} became {value} at step "
                        f"{state.global_step}; lower the learning rate"
                    )
                self.values.extra.setdefault(key, []).append(value)
                row[key] = value
        if self.metrics_path is not None and state.is_world_process_zero:
            append_jsonl(self.metrics_path, [row])


class AfterStep(TrainerCallback):
    """Calls ``fn()`` after every optimizer step (e.g. a projection of the gate scores)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def on_step_end(self, args, state, control, **kwargs):
        self.fn()


class StopWhen(TrainerCallback):
    """Stops training once ``should_stop()`` is true (checked after each logged step).

    Only a step's log (one with its ``loss``) is a step: the summary the Trainer logs when
    training ends is not, so ``should_stop`` (which feeds the stage-1 stopping rule one
    step) is not called for it.
    """

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and self.should_stop():
            control.should_training_stop = True


def run_trainer(
    model: torch.nn.Module,
    args: TrainingArguments,
    *,
    train_features: Sequence[dict[str, Any]],
    collator: Callable[[list[dict[str, list[int]]]], dict[str, torch.Tensor]] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    extra_loss: Callable[[], torch.Tensor] | None = None,
    resume_from: Path | None = None,
    eval_mode: bool = False,
    preference: PreferenceTraining | None = None,
    stage_schedule: StageSchedule | None = None,
    label: str = "training",
    outlook: Callable[[], StepOutlook] | None = None,
) -> tuple[Trainer, float]:
    """Train ``model``; returns the trainer and the wall time in seconds.

    Supervised (``collator`` given): an :class:`IlaTrainer` on tokenized ``train_features``.
    With ``preference`` (``--objective dpo``): TRL's DPOTrainer with the same extra loss and
    eval mode (:mod:`ila.train.preference`) on ``train_features`` as preference rows.
    With ``resume_from`` (a ``checkpoint-N`` folder, see :mod:`ila.train.checkpoints`),
    training continues from that checkpoint: model or adapter weights, optimizer,
    scheduler, RNG states and data position. ``eval_mode``: see :class:`ExtraLossMixin`;
    ``stage_schedule``: :class:`StageSchedule`. Progress: the Trainer's bar at a terminal,
    else lines named ``label`` (ila.progress; ``outlook`` as in
    :func:`ila.progress.training_progress`).
    """
    if preference is not None:
        from ila.train.preference import dpo_trainer

        trainer = dpo_trainer(
            model,
            args,
            rows=train_features,
            preference=preference,
            callbacks=callbacks,
            extra_loss=extra_loss,
            eval_mode=eval_mode,
            stage_schedule=stage_schedule,
        )
    else:
        if collator is None:
            raise ValueError("a supervised stage needs a collator")
        trainer = IlaTrainer(
            model=model,
            args=args,
            train_dataset=list(train_features),
            data_collator=collator,
            callbacks=list(callbacks),
            extra_loss=extra_loss,
            eval_mode=eval_mode,
            stage_schedule=stage_schedule,
        )
    _set_reporting(trainer, args, label, outlook)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return trainer, time.perf_counter() - start


def _set_reporting(
    trainer: Trainer,
    args: TrainingArguments,
    label: str,
    outlook: Callable[[], StepOutlook] | None,
) -> None:
    """Replace the Trainer's progress callbacks with ila's (a bar only at a terminal, else
    progress lines named ``label``) and point TensorBoard events at the stage's folder."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)  # disable_tqdm's: a printed line per step
    if not args.disable_tqdm:
        trainer.add_callback(_BarOnly())
    else:
        trainer.add_callback(training_progress(label, outlook))
    if "tensorboard" in args.report_to:
        from transformers.integrations import TensorBoardCallback

        # Events go to <stage dir>/tensorboard (RUN/stage1, RUN/stage2, FT), not to a
        # dated folder under the Trainer's scratch dir: `tensorboard --logdir RUN` finds all.
        board = TensorBoardCallback()
        board.logging_dir = str(Path(args.output_dir).parent / "tensorboard")
        trainer.remove_callback(TensorBoardCallback)
        trainer.add_callback(board)
