"""The ILA scorer: stage 1 (LoRA until epsilon-stable) then stage 2 (learned gates).

docs/method.md:
- Stage 1 trains a LoRA adapter on every unit with the next-token loss on response tokens
  and stops at the first step T at which training is epsilon-stable
  (:mod:`ila.core.stability`), or at the hard cap ``stage1.max_steps``.
- Stage 2 freezes theta_0 and the stage-1 LoRA weights, puts a gate sigmoid(s_i) on each
  unit's update (:mod:`ila.core.gates`) and trains only s with Adam on the same loss plus the
  sparsity budget.
- Importance of unit i = sigmoid(s_i) at the end of stage 2; raw s is kept.

Artifacts under the run directory: ``stage1/adapter`` (peft), ``stage1/summary.json``,
``stage2/summary.json``, ``stage2/gate_trajectory.json`` and rows in ``metrics.jsonl``;
with ``--save-steps``, Trainer checkpoints under ``stage1/trainer`` and ``stage2/trainer``
(each with ILA's ``ila_state.json``, see :mod:`ila.train.checkpoints`). Each finished stage is
recorded in ``run_state.json``; ``--resume`` reuses finished stages and continues an
unfinished one from its last complete checkpoint (docs/distributed.md).
"""

from __future__ import annotations

import logging
import math
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments

from ila.config import Stage2Config, setting
from ila.core.cooldown import cooldown_length, learning_rate_factor
from ila.core.deltas import (
    DELTAS_FILE,
    delta_norms,
    load_deltas,
    load_unit_weights,
    save_deltas,
    snapshot_unit_weights,
    take_deltas,
    unit_weight,
)
from ila.core.gate_optimizer import SharedScaleAdam
from ila.core.gates import (
    GatedModel,
    attach_delta_gates,
    attach_gates,
    budget_loss,
    project_to_budget,
)
from ila.core.layers import LayerMap
from ila.core.lora import add_lora, lora_state, lora_update_norms
from ila.core.scores import LayerScores, UnitScore, jaccard
from ila.core.stability import StabilityStatus, stage1_detector, top_set
from ila.core.ties import loss_moved
from ila.errors import IlaError
from ila.files import atomic_directory, atomic_write_json, read_json
from ila.progress import StepOutlook
from ila.run_files import GATE_TRAJECTORY_FILE, METRICS_FILE, STAGE_SUMMARY_FILE
from ila.rundir import RunDir
from ila.scorers.base import ScoringContext
from ila.scorers.common import preserved_model_state
from ila.train.checkpoints import (
    CheckpointState,
    StageCheckpoint,
    discard_incomplete_checkpoints,
    last_complete_checkpoint,
    load_adapter_weights,
    rewind_metrics,
)
from ila.train.parallel import is_main_process
from ila.train.sharding import average_unmanaged_gradients
from ila.train.trainer import (
    AfterStep,
    MetricsLogger,
    StageSchedule,
    StepValues,
    StopWhen,
    make_training_args,
    run_trainer,
    stage_seed,
)

__all__ = [
    "FullUpdate",
    "LoraUpdate",
    "ila_scores",
    "run_stage1",
    "run_stage2",
    "score_ila",
    "tail_mean",
]

log = logging.getLogger(__name__)


def score_ila(ctx: ScoringContext) -> LayerScores:
    """Run ILA stages 1 and 2 on ``ctx`` and return the learned unit importances.

    Stage 1 trains a LoRA adapter on every unit, or with ``stage1.method == "full"`` the
    unit weights themselves (docs/method.md, "Stage 1 as a full fine-tune"); stage 2 gates
    the LoRA update or the weight change Delta_i = W_i(T) - W_i(0).
    """
    # Leave the caller's model as it was: peft's LoRA layers removed (unload), the unit
    # weights a full stage 1 trains put back, and the requires_grad flags and train/eval
    # modes that peft and the Trainer change restored.
    with preserved_model_state(ctx.model):
        if ctx.config.stage1.method == "full":
            update = FullUpdate(ctx.model, ctx.layer_map)
            try:
                stage1 = run_stage1(ctx, ctx.model, update)
                stage2 = run_stage2(ctx, ctx.model, deltas=update.deltas())
            finally:
                update.restore()
        else:
            if ctx.config.model.quantization == "nf4":
                from peft import prepare_model_for_kbit_training

                # QLoRA's preparation of a 4-bit base (float32 norms, input gradients).
                ctx.model = prepare_model_for_kbit_training(ctx.model)
            model = add_lora(
                ctx.model, ctx.layer_map.units, ctx.config.lora, seed=ctx.config.train.seed
            )
            try:
                stage1 = run_stage1(ctx, model)
                stage2 = run_stage2(ctx, model)
            finally:
                ctx.model = model.unload()
    return ila_scores(ctx, stage1, stage2)


class LoraUpdate:
    """Stage 1 trains a LoRA adapter (peft) on every unit; Delta_i = (alpha / r) B_i A_i."""

    folder = "adapter"

    def __init__(self, model: torch.nn.Module, layer_map: LayerMap) -> None:
        self.model, self.layer_map = model, layer_map

    def norms(self) -> torch.Tensor:
        """||Delta_i||_F of every unit (LayerMap order)."""
        return lora_update_norms(self.model, self.layer_map)

    def load_finished(self, out: Path) -> None:
        """Take up the update a finished stage 1 saved in ``out``."""
        load_adapter_weights(self.model, out / self.folder)

    def load_checkpoint(self, folder: Path) -> None:
        """Take up the update of a Trainer checkpoint."""
        load_adapter_weights(self.model, folder)

    def gather(self) -> dict[str, torch.Tensor]:
        """What :meth:`save` writes, whole on the main process (under FSDP the LoRA weights
        are gathered; every process must call it)."""
        return lora_state(self.model, keep=is_main_process())

    def save(self, folder: Path, state: dict[str, torch.Tensor]) -> None:
        """Write the adapter (peft ``save_pretrained``) from :meth:`gather`'s ``state``."""
        self.model.save_pretrained(folder, state_dict=state)


class FullUpdate(LoraUpdate):
    """Stage 1 trains every unit's weights; Delta_i = W_i(T) - W_i(0) (ila.core.deltas).

    Makes the unit weights (only them) trainable and keeps W_i(0) beside them.
    """

    folder = "deltas"

    def __init__(self, model: torch.nn.Module, layer_map: LayerMap) -> None:
        super().__init__(model, layer_map)
        for param in model.parameters():
            param.requires_grad_(False)
        for unit in layer_map.units:
            unit_weight(model, unit.module_path).requires_grad_(True)
        self.initial = snapshot_unit_weights(model, layer_map)
        self._deltas: dict[str, torch.Tensor] | None = None

    def norms(self) -> torch.Tensor:
        return delta_norms(self.model, self.layer_map, self.initial)

    def load_finished(self, out: Path) -> None:
        device = next(self.model.parameters()).device
        self._deltas = load_deltas(out / self.folder / DELTAS_FILE, self.layer_map, device)

    def load_checkpoint(self, folder: Path) -> None:
        load_unit_weights(self.model, self.layer_map, folder)

    def gather(self) -> dict[str, torch.Tensor]:
        return {}  # full stage 1 is refused under FSDP (ila.train.parallel): nothing to gather

    def save(self, folder: Path, state: dict[str, torch.Tensor]) -> None:
        # Taking the deltas here (rather than a copy of W - W(0) beside them) keeps two
        # copies of the unit weights at most; stage 2 reuses them.
        save_deltas(folder / DELTAS_FILE, self.deltas(), self.layer_map)

    def deltas(self) -> dict[str, torch.Tensor]:
        """Delta_i of every unit; the model's unit weights are back at W_i(0) from here on."""
        if self._deltas is None:
            self._deltas = take_deltas(self.model, self.layer_map, self.initial)
        return self._deltas

    @torch.no_grad()
    def restore(self) -> None:
        """Put back W_i(0) wherever stage 1 left trained weights (an error mid-way)."""
        for name, start in self.initial.items():
            unit_weight(self.model, self.layer_map.unit(name).module_path).copy_(start)
        self.initial.clear()


def run_stage1(
    ctx: ScoringContext, model: torch.nn.Module, update: LoraUpdate | None = None
) -> dict[str, Any]:
    """Train ``model``'s stage-1 update until epsilon-stable (or the cap); return a summary.

    ``update`` says what is trained: the LoRA adapter of a peft ``model`` (the default,
    :class:`LoraUpdate`) or the unit weights (:class:`FullUpdate`).

    docs/method.md, "Stage 1". Phases: reuse a finished stage, set up the stability watch,
    restore an interrupted run, train until stable, summarise, save. With ``ctx.resume``:
    a stage 1 the run state lists as complete is not trained again (its adapter is
    loaded); otherwise training continues from the last complete checkpoint with the loss
    history restored, so the stability test stops at the same T.
    """
    cfg, train = ctx.config.stage1, ctx.config.train
    update = update or LoraUpdate(model, ctx.layer_map)
    out = RunDir(ctx.output_dir).stage(1)
    if ctx.resume and _completed(ctx, "stage1"):
        update.load_finished(out)
        log.info("stage 1 finished before the interruption; reusing %s", out)
        return read_json(out / STAGE_SUMMARY_FILE)
    _log_stage1_start(ctx)
    watch = _Stage1Watch(ctx, update)
    checkpoint = _resume_point(ctx, out / "trainer", "stage1")
    seconds_before = watch.replay(checkpoint)
    args = _stage1_training_args(ctx, out)
    schedule = StageSchedule(lr_factor=watch.lr_factor) if cfg.cooldown_fraction else None
    if checkpoint is not None and watch.finished():
        # The interrupted run stopped at this checkpoint: its weights are stage 1's result.
        update.load_checkpoint(checkpoint.folder)
        steps, seconds = checkpoint.step, seconds_before
    else:
        trainer, seconds = run_trainer(
            model,
            args,
            train_features=ctx.train_features,
            collator=ctx.collator,
            preference=ctx.preference,
            callbacks=[
                MetricsLogger("stage1", ctx.output_dir / METRICS_FILE, watch.values, watch.probe),
                StopWhen(watch.step_and_finished),
                CheckpointState("stage1", watch.values, seconds_before=seconds_before),
            ],
            resume_from=checkpoint.folder if checkpoint is not None else None,
            stage_schedule=schedule,
            label="stage 1",
            outlook=watch.outlook,
        )
        steps, seconds = trainer.state.global_step, seconds + seconds_before
    examples_per_step = train.batch_size * train.grad_accum * args.world_size
    summary = _stage1_summary(ctx, watch, steps, seconds, examples_per_step)
    if not summary["stable"]:
        log.warning(
            "stage 1 reached --stage1-max-steps %d before it was epsilon-stable; the mask is "
            "learned at the cap (raise --stage1-max-steps or --stage1-epsilon)",
            cfg.max_steps,
        )
    _save_stage1(ctx, out, update, summary)
    return summary


def _log_stage1_start(ctx: ScoringContext) -> None:
    """Log what stage 1 trains and its stopping rule (docs/method.md, "Stage 1")."""
    cfg = ctx.config.stage1
    log.info(
        "stage 1: %s on %d units until stable (%s rule, checks every %d steps, at most %d)",
        "LoRA" if cfg.method == "lora" else "full fine-tuning",
        len(ctx.layer_map.units),
        cfg.criterion,
        cfg.window,
        cfg.max_steps,
    )


def _stage1_training_args(ctx: ScoringContext, out: Path) -> TrainingArguments:
    """The Trainer arguments of stage 1: its learning rate and warm-up, up to the cap plus
    its cool-down, checkpoints under ``out/trainer``."""
    cfg = ctx.config.stage1
    return make_training_args(
        ctx.config.train,
        output_dir=out / "trainer",
        learning_rate=cfg.resolved_learning_rate(),
        # Room for the cool-down after a stop at the cap (the watch stops the run earlier).
        max_steps=cfg.max_steps + cooldown_length(cfg.max_steps, cfg.cooldown_fraction),
        warmup_steps=cfg.warmup_steps,
        scheduler="constant_with_warmup",
        device=ctx.config.model.device,
    )


def _save_stage1(
    ctx: ScoringContext, out: Path, update: LoraUpdate, summary: dict[str, Any]
) -> None:
    """Write stage 1's update and summary.json under ``out`` and mark the stage finished in
    the run state (main process; every process gathers the update)."""
    state = update.gather()
    if is_main_process():
        with atomic_directory(out / update.folder) as tmp:
            update.save(tmp, state)
        atomic_write_json(out / STAGE_SUMMARY_FILE, summary)
        RunDir(ctx.output_dir).mark("stage1")


class _Stage1Watch:
    """Stage 1's stopping rule (:mod:`ila.core.stability`), the cool-down after the stop
    (:mod:`ila.core.cooldown`) and the per-step values they read.

    ``probe`` is logged with every step; ``step_and_finished`` is asked after every step,
    feeds the rule (which reads the per-unit update norms at the steps where the ranking
    check wants them) and says whether stage 1 is over: the stop S (T, or the cap) plus
    the cool-down steps after it.
    """

    def __init__(self, ctx: ScoringContext, update: LoraUpdate) -> None:
        cfg = ctx.config.stage1
        self.update = update
        self.max_steps, self.warmup_steps = cfg.max_steps, cfg.warmup_steps
        self.cooldown_fraction = cfg.cooldown_fraction
        groups = [u.module_type for u in ctx.layer_map.units] if cfg.rank_within_type else None
        self.detector = stage1_detector(cfg, groups)
        self.patience = cfg.patience
        self.values = StepValues()
        self.track_update = cfg.criterion == "loss+update"
        self.last_check: StabilityStatus | None = None

    def probe(self) -> dict[str, float]:
        return {"update_norm": float(self.update.norms().norm())}

    def stop_step(self) -> int | None:
        """S: the stable step T, or the cap once reached; None while training goes on."""
        if self.detector.stable_step is not None:
            return self.detector.stable_step
        return self.max_steps if len(self.values.loss) >= self.max_steps else None

    def cooldown_steps(self) -> int:
        stop = self.stop_step()
        return 0 if stop is None else cooldown_length(stop, self.cooldown_fraction)

    def finished(self) -> bool:
        """Stage 1 is over: the stop is reached and its cool-down steps are done."""
        stop = self.stop_step()
        return stop is not None and len(self.values.loss) >= stop + self.cooldown_steps()

    def step_and_finished(self) -> bool:
        self.stable()
        return self.finished()

    def lr_factor(self, step: int) -> float:
        """The learning-rate factor of optimizer step ``step`` (a LambdaLR factor)."""
        return learning_rate_factor(
            step,
            warmup_steps=self.warmup_steps,
            stop_step=self.stop_step(),
            cooldown_steps=self.cooldown_steps(),
        )

    def stable(self) -> bool:
        step = len(self.values.loss)
        units = None
        if self.detector.wants_unit_values(step):
            # The ranking check reads the per-unit update norms (r x r products, cheap).
            units = self.update.norms().tolist()
            self.values.unit_values[step] = units
        status = self.detector.update(self._step(-1), units)
        if any(v is not None for v in status.changes.values()):
            self.last_check = status
        return status.stable

    def outlook(self) -> StepOutlook:
        """For the progress lines (ila.progress): the steps stage 1 runs now (at most the cap
        and its cool-down until the stop is known) and the last stopping check."""
        stop = self.stop_step()
        if stop is None:
            cap = self.max_steps + cooldown_length(self.max_steps, self.cooldown_fraction)
            return StepOutlook(cap, at_most=True, note=self._check_note())
        reason = "cap reached" if self.detector.stable_step is None else "epsilon-stable"
        cooldown = self.cooldown_steps()
        note = f"{reason} at step {stop}" + (f", {cooldown} cool-down steps" if cooldown else "")
        return StepOutlook(stop + cooldown, note=note)

    def _check_note(self) -> str:
        check = self.last_check
        if check is None:
            return "no stopping check yet"
        values = ", ".join(
            f"{name.replace('_', ' ')} {value:.3g}"
            for name, value in check.changes.items()
            if value is not None
        )
        return (
            f"check at step {check.step}: {values}; stable {check.streak} of {self.patience} "
            "needed in a row"
        )

    def replay(self, checkpoint: StageCheckpoint | None) -> float:
        """Restore an interrupted run's history into the detector; its seconds so far."""
        if checkpoint is None:
            return 0.0
        checkpoint.restore_values(self.values)
        for i in range(len(self.values.loss)):  # the detector sees the history it saw before
            self.detector.update(self._step(i), self.values.unit_values.get(i + 1))
        return checkpoint.seconds

    def _step(self, i: int) -> dict[str, float]:
        step = {"loss": self.values.loss[i]}
        if self.track_update:
            step["update_norm"] = self.values.extra["update_norm"][i]
        return step


def _stage1_summary(
    ctx: ScoringContext,
    watch: _Stage1Watch,
    steps: int,
    seconds: float,
    examples_per_step: int,
) -> dict[str, Any]:
    """stage1/summary.json: T, whether it was stable, the curves and the checks."""
    cfg, values, stable_step = ctx.config.stage1, watch.values, watch.detector.stable_step
    stop = watch.stop_step() or steps
    return {
        "stable": stable_step is not None,
        "T": stable_step if stable_step is not None else stop,
        "stable_step": stable_step,
        "steps": steps,
        "max_steps": cfg.max_steps,
        # The cool-down after the stop (docs/method.md, Stage 1): the mask is learned at
        # "steps" = T (or the cap) + these steps.
        "cooldown_fraction": cfg.cooldown_fraction,
        "cooldown_steps": steps - stop,
        "steps_per_epoch": math.ceil(len(ctx.train_features) / examples_per_step),
        "epochs": steps * examples_per_step / len(ctx.train_features),
        "seconds": seconds,
        "seconds_per_step": seconds / max(steps, 1),
        "first_loss": values.loss[0] if values.loss else None,
        "final_loss": values.loss[-1] if values.loss else None,
        "loss_curve": values.loss,
        "update_norm_curve": values.extra.get("update_norm", []),
        "method": cfg.method,
        "learning_rate": cfg.resolved_learning_rate(),
        "criterion": cfg.criterion,
        "epsilon": cfg.epsilon,
        "window": cfg.window,
        "patience": cfg.patience,
        "rank_epsilon": cfg.rank_epsilon if cfg.criterion == "drop+ranking" else None,
        "rank_within_type": cfg.rank_within_type,
        "ranking_checks": _ranking_checks(values.unit_values, cfg.rank_fraction),
        # ||Delta_i|| at the end of stage 1: what the gates scale (and the lora-norm scorer).
        "unit_update_norms": watch.update.norms().tolist(),
    }


def run_stage2(
    ctx: ScoringContext,
    model: torch.nn.Module,
    *,
    deltas: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Learn the gate scores s on a peft ``model`` whose LoRA weights are then frozen, or
    (``deltas`` of a full stage 1) on the weight changes Delta_i of a model at W(0).

    docs/method.md, "Stage 2": only s is trained (Adam), on the task loss plus the
    sparsity budget, with the stage's own data order (:func:`ila.train.trainer.stage_seed`),
    ``stage2.grad_accum`` micro-batches per step and, with ``stage2.eval_mode``, no
    dropout. The reported loss is the task loss without the budget term. The importance
    is s averaged over the last ``stage2.tail_fraction`` of the steps (:func:`tail_mean`).
    Phases: reuse a finished stage, attach the gates, restore an interrupted run, train
    the gates, summarise, save.

    With ``ctx.resume``, training continues from the last complete checkpoint: the gate
    scores (which peft's adapter checkpoint does not hold) and their trajectories come
    from its ``ila_state.json``, Adam's moments from the Trainer's optimizer state.
    """
    cfg, train = ctx.config.stage2, ctx.config.train
    out = RunDir(ctx.output_dir).stage(2)
    if ctx.resume and _completed(ctx, "stage2"):
        log.info("stage 2 finished before the interruption; reusing %s", out)
        return read_json(out / STAGE_SUMMARY_FILE)
    gated = _attach_stage2_gates(ctx, model, deltas)
    record = _GateRecord(gated, cfg)
    checkpoint = _resume_point(ctx, out / "trainer", "stage2")
    record.restore(checkpoint)
    schedule = _stage2_schedule(cfg)
    args = _stage2_training_args(ctx, out)
    seconds_before = checkpoint.seconds if checkpoint is not None else 0.0
    try:
        trainer, seconds = run_trainer(
            model,
            args,
            train_features=ctx.train_features,
            collator=ctx.collator,
            preference=ctx.preference,
            callbacks=_stage2_callbacks(ctx, record, seconds_before),
            extra_loss=record.budget,
            resume_from=checkpoint.folder if checkpoint is not None else None,
            eval_mode=cfg.eval_mode,
            stage_schedule=schedule,
            label="stage 2",
        )
    finally:
        gated.detach()
    summary = _stage2_summary(ctx, record, trainer.state.global_step, seconds + seconds_before)
    summary["examples_per_step"] = (
        train.batch_size * args.gradient_accumulation_steps * args.world_size
    )
    if is_main_process():
        _save_stage2(ctx, out, record, summary)
    return summary


def _attach_stage2_gates(
    ctx: ScoringContext,
    model: torch.nn.Module,
    deltas: dict[str, torch.Tensor] | None,
) -> GatedModel:
    """Freeze ``model`` and put a gate on each unit's LoRA update, or on ``deltas`` (a full
    stage 1); the gate scores s are then the only trainable values (docs/method.md, Stage 2)."""
    cfg = ctx.config.stage2
    for param in model.parameters():
        param.requires_grad_(False)
    if deltas is None:
        gated = attach_gates(model, ctx.layer_map, granularity=cfg.unit, init_score=cfg.init_score)
    else:
        gated = attach_delta_gates(
            model, ctx.layer_map, deltas, granularity=cfg.unit, init_score=cfg.init_score
        )
    # Under FSDP a model stage 1 already sharded does not manage the new gates (ila.train.sharding).
    average_unmanaged_gradients(model, [gated.bank.scores])
    log.info(
        "stage 2: %d %s gates for %d steps of %d micro-batches",
        len(gated.gate_names),
        cfg.unit,
        cfg.steps,
        cfg.grad_accum,
    )
    return gated


def _stage2_callbacks(
    ctx: ScoringContext, record: _GateRecord, seconds_before: float
) -> list[TrainerCallback]:
    """Stage 2's Trainer callbacks: the projection after each step (``project`` budget),
    the metrics rows and the checkpoint state of the gates."""
    callbacks: list[TrainerCallback] = (
        [AfterStep(record.project)] if ctx.config.stage2.budget == "project" else []
    )
    return [
        *callbacks,
        MetricsLogger("stage2", ctx.output_dir / METRICS_FILE, record.values, record.step),
        CheckpointState("stage2", record.values, record.state, seconds_before=seconds_before),
    ]


def _stage2_schedule(cfg: Stage2Config) -> StageSchedule | None:
    """Stage 2's optimizer when it is not the Trainer's own: Adam with one shared scale
    (``stage2.optimizer == "adam-shared"``); None otherwise."""
    if cfg.optimizer != "adam-shared":
        return None
    return StageSchedule(optimizer=lambda params: SharedScaleAdam(params, cfg.learning_rate))


def _stage2_training_args(ctx: ScoringContext, out: Path) -> TrainingArguments:
    """The Trainer arguments of stage 2: ``stage2.steps`` steps of ``stage2.grad_accum``
    times the run's micro-batches, its own data order, checkpoints under ``out/trainer``."""
    cfg, train = ctx.config.stage2, ctx.config.train
    return make_training_args(
        train,
        output_dir=out / "trainer",
        learning_rate=cfg.learning_rate,
        max_steps=cfg.steps,
        scheduler=cfg.schedule,
        device=ctx.config.model.device,
        seed=stage_seed(train.seed, "stage2"),
        grad_accum=train.grad_accum * cfg.grad_accum,
    )


def _save_stage2(
    ctx: ScoringContext, out: Path, record: _GateRecord, summary: dict[str, Any]
) -> None:
    """Write stage2/gate_trajectory.json and summary.json under ``out`` and mark the stage
    finished in the run state (main process only)."""
    atomic_write_json(
        out / GATE_TRAJECTORY_FILE,
        {
            "gate_names": list(record.gated.gate_names),
            "values": record.trajectory,
            "scores": record.score_trajectory,
        },
    )
    atomic_write_json(out / STAGE_SUMMARY_FILE, summary)
    RunDir(ctx.output_dir).mark("stage2")


class _GateRecord:
    """Stage 2's gates over the steps: the budget term, the trajectories, the checkpoint
    state, and (``project`` budget) the projection after each step."""

    def __init__(self, gated: GatedModel, cfg: Stage2Config) -> None:
        self.gated, self.cfg = gated, cfg
        self.values = StepValues()
        self.trajectory: list[list[float]] = [gated.gate_values().tolist()]
        self.score_trajectory: list[list[float]] = [gated.raw_scores().tolist()]
        # The budget term of the step being logged (gates do not change within a step),
        # so the reported task loss is the logged objective minus it.
        self.last_budget = 0.0
        if cfg.budget == "project":
            self.project()
            self.trajectory = [gated.gate_values().tolist()]
            self.score_trajectory = [gated.raw_scores().tolist()]

    def restore(self, checkpoint: StageCheckpoint | None) -> None:
        """Continue from an interrupted run's gate scores and trajectories (already projected)."""
        if checkpoint is None:
            return
        checkpoint.restore_values(self.values)
        scores, names = checkpoint.state["gate_scores"], self.gated.gate_names
        if len(scores) != len(names):
            raise IlaError(
                f"{checkpoint.folder}: holds {len(scores)} gate scores, the model has "
                f"{len(names)} gates; resume with the run's ",
                setting("stage2", "unit"),
            )
        bank = self.gated.bank.scores
        with torch.no_grad():
            bank.copy_(torch.tensor(scores, dtype=bank.dtype))
        self.trajectory = [list(row) for row in checkpoint.state["trajectory"]]
        self.score_trajectory = [list(row) for row in checkpoint.state["score_trajectory"]]

    def project(self) -> None:
        project_to_budget(self.gated.bank.scores, self.cfg.target_fraction)

    def budget(self) -> torch.Tensor:
        cfg = self.cfg
        value = budget_loss(
            self.gated.gammas(),
            kind=cfg.budget,
            weight=cfg.budget_weight,
            target_fraction=cfg.target_fraction,
        )
        self.last_budget = float(value.detach())
        return value

    def step(self) -> dict[str, float]:
        """After each step: append the gates to the trajectories; the values to log."""
        gammas = self.gated.gate_values()
        self.trajectory.append(gammas.tolist())
        self.score_trajectory.append(self.gated.raw_scores().tolist())
        return {
            "mean_gate": float(gammas.mean()),
            "budget": self.last_budget,
            "task_loss": self.values.loss[-1] - self.last_budget,
        }

    def state(self) -> dict[str, Any]:
        return {
            "gate_scores": self.gated.raw_scores().tolist(),
            "trajectory": self.trajectory,
            "score_trajectory": self.score_trajectory,
        }


def _stage2_summary(
    ctx: ScoringContext, record: _GateRecord, steps: int, seconds: float
) -> dict[str, Any]:
    """stage2/summary.json: the tail-averaged scores, the gates and the curves."""
    cfg, scores = ctx.config.stage2, record.score_trajectory
    raw = tail_mean(scores, cfg.tail_fraction)
    task_loss = record.values.extra.get("task_loss", [])
    return {
        "unit": cfg.unit,
        "gate_names": list(record.gated.gate_names),
        "steps": steps,
        "seconds": seconds,
        "seconds_per_step": seconds / max(steps, 1),
        "eval_mode": cfg.eval_mode,
        "optimizer": cfg.optimizer,
        "schedule": cfg.schedule,
        "tail_fraction": cfg.tail_fraction,
        "tail_steps": _tail_length(len(scores) - 1, cfg.tail_fraction),
        "final_loss": task_loss[-1] if task_loss else None,
        "loss_curve": task_loss,
        "objective_curve": record.values.loss,
        "mean_gate": float(sum(record.trajectory[-1]) / len(record.trajectory[-1])),
        "raw_scores": raw,
        "gates": [_sigmoid(x) for x in raw],
        "last_raw_scores": scores[-1],
        # How much the ranking still moved over the tail: top-25% Jaccard of the tail's
        # first and last step (1.0: settled).
        "tail_top25_jaccard": _tail_jaccard(scores, cfg.tail_fraction),
    }


def _tail_length(steps: int, tail_fraction: float) -> int:
    return max(1, math.ceil(tail_fraction * steps)) if steps else 1


def tail_mean(score_trajectory: list[list[float]], tail_fraction: float) -> list[float]:
    """Each gate score s averaged over the last ``tail_fraction`` of the steps.

    ``score_trajectory[0]`` is the initial s and row j the s after step j. The tail
    holds the last max(1, ceil(tail_fraction x steps)) rows (the last row alone when the
    fraction is 0). Averaging s over the tail makes the importance independent of where
    a still moving process happened to stop (docs/method.md, "Stage 2").
    """
    steps = len(score_trajectory) - 1
    rows = score_trajectory[-_tail_length(steps, tail_fraction) :]
    return [sum(col) / len(rows) for col in zip(*rows, strict=True)]


def _tail_jaccard(score_trajectory: list[list[float]], tail_fraction: float) -> float:
    steps = len(score_trajectory) - 1
    first = score_trajectory[-_tail_length(steps, tail_fraction)]
    return jaccard(top_set(first, 0.25), top_set(score_trajectory[-1], 0.25))


def _sigmoid(x: float) -> float:
    """sigmoid in float64 (float32 rounds it to 1.0 from s of about 16.6 on)."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _ranking_checks(unit_values: dict[int, list[float]], fraction: float) -> list[dict[str, Any]]:
    """Top-set Jaccard of consecutive stage-1 checks (the ranking the update norms imply)."""
    tops = {step: top_set(values, fraction) for step, values in sorted(unit_values.items())}
    return [
        {"step": b, "jaccard_with_previous": jaccard(tops[a], tops[b])} for a, b in pairwise(tops)
    ]


def _completed(ctx: ScoringContext, stage: str) -> bool:
    return RunDir(ctx.output_dir).completed(stage)


def _resume_point(ctx: ScoringContext, folder: Path, stage: str) -> StageCheckpoint | None:
    """The checkpoint a resumed ``stage`` continues from (None: the stage starts again).

    The main process also removes what the interruption left after that point: newer
    incomplete checkpoint folders and the ``metrics.jsonl`` rows of steps to be redone.
    """
    if not ctx.resume:
        return None
    checkpoint = last_complete_checkpoint(folder, stage)
    step = checkpoint.step if checkpoint is not None else 0
    if is_main_process():
        discard_incomplete_checkpoints(folder, step)
        rewind_metrics(ctx.output_dir / METRICS_FILE, stage, step)
    if checkpoint is None:
        log.info("%s: no complete checkpoint under %s; the stage starts again", stage, folder)
    else:
        log.info("%s: resuming from %s (step %d)", stage, checkpoint.folder, step)
    return checkpoint


def ila_scores(ctx: ScoringContext, stage1: dict[str, Any], stage2: dict[str, Any]) -> LayerScores:
    """The ranking of a run from its stage summaries (docs/method.md, "Output")."""
    layer_map: LayerMap = ctx.layer_map
    meta = {
        "T": stage1["T"],
        "stage1_stable": stage1["stable"],
        # False when every stage-1 loss equals the first: nothing was learned, and the
        # ranking is a tie whatever the gates say (ila.core.ties).
        "stage1_loss_moved": loss_moved(stage1.get("loss_curve") or []),
        "stage1_steps": stage1["steps"],
        "stage1_seconds": stage1["seconds"],
        "stage2_steps": stage2["steps"],
        "stage2_seconds": stage2["seconds"],
        "seed": ctx.config.train.seed,
        "data_fingerprint": ctx.data_fingerprint,
        "num_train_examples": len(ctx.train_features),
        "lora": {"rank": ctx.config.lora.rank, "alpha": ctx.config.lora.alpha},
        "stage1": _stage1_settings(stage1),
        "stage2": _stage2_settings(ctx.config.stage2, stage2),
        # What one run can say about its own stability (docs/method.md, "Stability"):
        # how much the stage-1 norm ranking moved at the last check, and how much the
        # gate ranking moved over the stage-2 tail (top-25% Jaccard; 1.0 = settled).
        "self_stability": {
            "stage1_last_ranking_check": (stage1.get("ranking_checks") or [{}])[-1].get(
                "jaccard_with_previous"
            ),
            "stage2_tail_top25_jaccard": stage2.get("tail_top25_jaccard"),
        },
        # ||Delta_i|| of every module at the end of stage 1 (layout order): the update the
        # gates scale; `ila compare` correlates the ranking with it.
        "stage1_update_norms": stage1.get("unit_update_norms"),
    }
    return LayerScores(
        method="ila",
        model_id=ctx.model_id,
        unit_kind=stage2["unit"],
        units=_unit_scores(layer_map, stage2),
        layout=layer_map.to_dict(),
        meta=meta,
    )


def _unit_scores(layer_map: LayerMap, stage2: dict[str, Any]) -> list[UnitScore]:
    """One score per gate of the stage-2 summary: per module (LayerMap order) or per block
    (block order), with gamma = sigmoid(s) and the raw s (docs/method.md, "Output")."""
    raw, gammas = stage2["raw_scores"], stage2["gates"]
    if stage2["unit"] == "module":
        return [
            UnitScore(u.name, u.block, u.module_type, gammas[i], raw[i])
            for i, u in enumerate(layer_map.units)
        ]
    blocks = sorted({u.block for u in layer_map.units})
    return [
        UnitScore(layer_map.block_name(b), b, None, gammas[i], raw[i]) for i, b in enumerate(blocks)
    ]


def _stage1_settings(stage1: dict[str, Any]) -> dict[str, Any]:
    """The stage-1 settings a ranking records, read from stage1/summary.json."""
    return {
        "method": stage1.get("method", "lora"),
        "learning_rate": stage1.get("learning_rate"),
        "criterion": stage1.get("criterion"),
        "epsilon": stage1.get("epsilon"),
        "window": stage1.get("window"),
        "patience": stage1.get("patience"),
        "cooldown_steps": stage1.get("cooldown_steps", 0),
    }


def _stage2_settings(cfg: Stage2Config, stage2: dict[str, Any]) -> dict[str, Any]:
    """The stage-2 settings a ranking records: the run's config and, from
    stage2/summary.json, the examples per step."""
    return {
        "budget": cfg.budget,
        "budget_weight": cfg.budget_weight,
        "target_fraction": cfg.target_fraction,
        "learning_rate": cfg.learning_rate,
        "optimizer": cfg.optimizer,
        "schedule": cfg.schedule,
        "init_score": cfg.init_score,
        "grad_accum": cfg.grad_accum,
        "tail_fraction": cfg.tail_fraction,
        "eval_mode": cfg.eval_mode,
        "examples_per_step": stage2.get("examples_per_step"),
    }
