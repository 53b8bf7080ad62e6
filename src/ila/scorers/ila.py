"""The ILA scorer: stage 1 (LoRA until epsilon-stable) then stage 2 (learned gates).

ILA-METHOD.md:
- Stage 1 trains a LoRA adapter on every unit with the next-token loss on response tokens
  and stops at the first step T at which training is epsilon-stable
  (:mod:`ila.stability`), or at the hard cap ``stage1.max_steps``.
- Stage 2 freezes theta_0 and the stage-1 LoRA weights, puts a gate sigmoid(s_i) on each
  unit's update (:mod:`ila.gates`) and trains only s with Adam on the same loss plus the
  sparsity budget.
- Importance of unit i = sigmoid(s_i) at the end of stage 2; raw s is kept.

Artifacts under the run directory: ``stage1/adapter`` (peft), ``stage1/summary.json``,
``stage2/summary.json``, ``stage2/gate_trajectory.json`` and rows in ``metrics.jsonl``;
with ``--save-steps``, Trainer checkpoints under ``stage1/trainer`` and ``stage2/trainer``
(each with ILA's ``ila_state.json``, see :mod:`ila.checkpoints`). Each finished stage is
recorded in ``run_state.json``; ``--resume`` reuses finished stages and continues an
unfinished one from its last complete checkpoint (docs/distributed.md).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from ila.checkpoints import (
    CheckpointState,
    StageCheckpoint,
    discard_incomplete_checkpoints,
    last_complete_checkpoint,
    load_adapter_weights,
    rewind_metrics,
)
from ila.errors import IlaError
from ila.gates import attach_gates, budget_loss, project_to_budget
from ila.layers import LayerMap
from ila.lora import add_lora, lora_update_norms
from ila.rundir import (
    atomic_directory,
    atomic_write_json,
    is_main_process,
    mark_stage,
    read_json,
    read_run_state,
)
from ila.scorers.base import ScoringContext
from ila.scorers.common import preserved_model_state
from ila.scores import LayerScores, UnitScore
from ila.stability import StabilityDetector
from ila.training import (
    AfterStep,
    MetricsLogger,
    StepValues,
    StopWhen,
    make_training_args,
    run_trainer,
)

__all__ = ["run_stage1", "run_stage2", "score_ila"]

log = logging.getLogger(__name__)


def score_ila(ctx: ScoringContext) -> LayerScores:
    """Run ILA stages 1 and 2 on ``ctx`` and return the learned unit importances."""
    # Leave the caller's model as it was: peft's LoRA layers removed (unload), and the
    # requires_grad flags and train/eval modes that peft and the Trainer change restored.
    with preserved_model_state(ctx.model):
        model = add_lora(
            ctx.model, ctx.layer_map.units, ctx.config.lora, seed=ctx.config.train.seed
        )
        try:
            stage1 = run_stage1(ctx, model)
            stage2 = run_stage2(ctx, model)
        finally:
            ctx.model = model.unload()
    return _to_scores(ctx, stage1, stage2)


def run_stage1(ctx: ScoringContext, model: torch.nn.Module) -> dict[str, Any]:
    """Train the LoRA adapter of ``model`` until epsilon-stable (or the cap); return a summary.

    With ``ctx.resume``: a stage 1 the run state lists as complete is not trained again
    (its adapter is loaded); otherwise training continues from the last complete
    checkpoint with the loss history restored, so the stability test stops at the same T.
    """
    cfg, train = ctx.config.stage1, ctx.config.train
    out = ctx.output_dir / "stage1"
    if ctx.resume and _completed(ctx, "stage1"):
        load_adapter_weights(model, out / "adapter")
        log.info("stage 1 finished before the interruption; reusing %s", out)
        return read_json(out / "summary.json")
    detector = StabilityDetector(
        epsilon=cfg.epsilon, window=cfg.window, patience=cfg.patience, min_steps=cfg.min_steps
    )
    values = StepValues()
    track_update = cfg.criterion == "loss+update"

    def probe() -> dict[str, float]:
        norm = float(lora_update_norms(model, ctx.layer_map).norm())
        return {"update_norm": norm}

    def step_values(i: int) -> dict[str, float]:
        step = {"loss": values.loss[i]}
        if track_update:
            step["update_norm"] = values.extra["update_norm"][i]
        return step

    def stable() -> bool:
        return detector.update(step_values(-1)).stable

    checkpoint = _resume_point(ctx, out / "trainer", "stage1")
    seconds_before = 0.0
    if checkpoint is not None:
        checkpoint.restore_values(values)
        for i in range(len(values.loss)):  # the detector sees the history it saw before
            detector.update(step_values(i))
        seconds_before = checkpoint.seconds

    args = make_training_args(
        train,
        output_dir=out / "trainer",
        learning_rate=cfg.learning_rate,
        max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup_steps,
        scheduler="constant_with_warmup",
        device=ctx.config.model.device,
    )
    if checkpoint is not None and detector.stable_step is not None:
        # The interrupted run stopped at this checkpoint: its weights are stage 1's result.
        load_adapter_weights(model, checkpoint.folder)
        steps, seconds = checkpoint.step, seconds_before
    else:
        trainer, seconds = run_trainer(
            model,
            args,
            train_features=ctx.train_features,
            collator=ctx.collator,
            callbacks=[
                MetricsLogger("stage1", ctx.output_dir / "metrics.jsonl", values, probe),
                StopWhen(stable),
                CheckpointState("stage1", values, seconds_before=seconds_before),
            ],
            resume_from=checkpoint.folder if checkpoint is not None else None,
        )
        steps, seconds = trainer.state.global_step, seconds + seconds_before
    examples_per_step = train.batch_size * train.grad_accum * args.world_size
    summary = {
        "stable": detector.stable_step is not None,
        "T": detector.stable_step if detector.stable_step is not None else steps,
        "stable_step": detector.stable_step,
        "steps": steps,
        "max_steps": cfg.max_steps,
        "steps_per_epoch": math.ceil(len(ctx.train_features) / examples_per_step),
        "epochs": steps * examples_per_step / len(ctx.train_features),
        "seconds": seconds,
        "seconds_per_step": seconds / max(steps, 1),
        "first_loss": values.loss[0] if values.loss else None,
        "final_loss": values.loss[-1] if values.loss else None,
        "loss_curve": values.loss,
        "update_norm_curve": values.extra.get("update_norm", []),
        "criterion": cfg.criterion,
        "epsilon": cfg.epsilon,
        "window": cfg.window,
        "patience": cfg.patience,
    }
    if not summary["stable"]:
        log.warning(
            "stage 1 reached --stage1-max-steps %d before it was epsilon-stable; the mask is "
            "learned at the cap (raise --stage1-max-steps or --stage1-epsilon)",
            cfg.max_steps,
        )
    if is_main_process():
        with atomic_directory(out / "adapter") as tmp:
            model.save_pretrained(tmp)
        atomic_write_json(out / "summary.json", summary)
        mark_stage(ctx.output_dir, "stage1")
    return summary


def run_stage2(ctx: ScoringContext, model: torch.nn.Module) -> dict[str, Any]:
    """Learn the gate scores s on a peft ``model`` whose LoRA weights are then frozen.

    With ``ctx.resume``, training continues from the last complete checkpoint: the gate
    scores (which peft's adapter checkpoint does not hold) and their trajectory come from
    its ``ila_state.json``, Adam's moments from the Trainer's optimizer state.
    """
    cfg, train = ctx.config.stage2, ctx.config.train
    out = ctx.output_dir / "stage2"
    if ctx.resume and _completed(ctx, "stage2"):
        log.info("stage 2 finished before the interruption; reusing %s", out)
        return read_json(out / "summary.json")
    for param in model.parameters():
        param.requires_grad_(False)
    gated = attach_gates(model, ctx.layer_map, granularity=cfg.unit, init_score=cfg.init_score)
    trajectory: list[list[float]] = [gated.gate_values().tolist()]
    values = StepValues()
    checkpoint = _resume_point(ctx, out / "trainer", "stage2")
    if checkpoint is not None:
        checkpoint.restore_values(values)
        scores = checkpoint.state["gate_scores"]
        if len(scores) != len(gated.gate_names):
            raise IlaError(
                f"{checkpoint.folder}: holds {len(scores)} gate scores, the model has "
                f"{len(gated.gate_names)} gates; resume with the run's --stage2-unit"
            )
        with torch.no_grad():
            gated.bank.scores.copy_(torch.tensor(scores, dtype=gated.bank.scores.dtype))
        trajectory = [list(row) for row in checkpoint.state["trajectory"]]
    callbacks = []
    if cfg.budget == "project":

        def project() -> None:
            project_to_budget(gated.bank.scores, cfg.target_fraction)

        if checkpoint is None:  # restored scores are already projected
            project()
            trajectory = [gated.gate_values().tolist()]
        callbacks.append(AfterStep(project))

    def record_gates() -> dict[str, float]:
        gammas = gated.gate_values()
        trajectory.append(gammas.tolist())
        with torch.no_grad():
            return {"mean_gate": float(gammas.mean()), "budget": float(budget())}

    def budget() -> torch.Tensor:
        return budget_loss(
            gated.bank(),
            kind=cfg.budget,
            weight=cfg.budget_weight,
            target_fraction=cfg.target_fraction,
        )

    def gate_state() -> dict[str, Any]:
        return {"gate_scores": gated.raw_scores().tolist(), "trajectory": trajectory}

    args = make_training_args(
        train,
        output_dir=out / "trainer",
        learning_rate=cfg.learning_rate,
        max_steps=cfg.steps,
        scheduler="constant",
        device=ctx.config.model.device,
    )
    seconds_before = checkpoint.seconds if checkpoint is not None else 0.0
    try:
        trainer, seconds = run_trainer(
            model,
            args,
            train_features=ctx.train_features,
            collator=ctx.collator,
            callbacks=[
                *callbacks,
                MetricsLogger("stage2", ctx.output_dir / "metrics.jsonl", values, record_gates),
                CheckpointState("stage2", values, gate_state, seconds_before=seconds_before),
            ],
            extra_loss=budget,
            resume_from=checkpoint.folder if checkpoint is not None else None,
        )
        raw = gated.raw_scores()
        gammas = gated.gate_values()
    finally:
        gated.detach()
    seconds += seconds_before
    summary = {
        "unit": cfg.unit,
        "gate_names": list(gated.gate_names),
        "steps": trainer.state.global_step,
        "seconds": seconds,
        "seconds_per_step": seconds / max(trainer.state.global_step, 1),
        "final_loss": values.loss[-1] if values.loss else None,
        "loss_curve": values.loss,
        "mean_gate": float(gammas.mean()),
        "raw_scores": raw.tolist(),
        "gates": gammas.tolist(),
    }
    if is_main_process():
        atomic_write_json(
            out / "gate_trajectory.json",
            {"gate_names": list(gated.gate_names), "values": trajectory},
        )
        atomic_write_json(out / "summary.json", summary)
        mark_stage(ctx.output_dir, "stage2")
    return summary


def _completed(ctx: ScoringContext, stage: str) -> bool:
    state = read_run_state(ctx.output_dir) or {}
    return stage in state.get("completed_stages", [])


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
        rewind_metrics(ctx.output_dir / "metrics.jsonl", stage, step)
    if checkpoint is None:
        log.info("%s: no complete checkpoint under %s; the stage starts again", stage, folder)
    else:
        log.info("%s: resuming from %s (step %d)", stage, checkpoint.folder, step)
    return checkpoint


def _to_scores(ctx: ScoringContext, stage1: dict[str, Any], stage2: dict[str, Any]) -> LayerScores:
    layer_map: LayerMap = ctx.layer_map
    raw, gammas = stage2["raw_scores"], stage2["gates"]
    if stage2["unit"] == "module":
        units = [
            UnitScore(u.name, u.block, u.module_type, gammas[i], raw[i])
            for i, u in enumerate(layer_map.units)
        ]
    else:
        blocks = sorted({u.block for u in layer_map.units})
        units = [
            UnitScore(layer_map.block_name(b), b, None, gammas[i], raw[i])
            for i, b in enumerate(blocks)
        ]
    meta = {
        "T": stage1["T"],
        "stage1_stable": stage1["stable"],
        "stage1_steps": stage1["steps"],
        "stage1_seconds": stage1["seconds"],
        "stage2_steps": stage2["steps"],
        "stage2_seconds": stage2["seconds"],
        "seed": ctx.config.train.seed,
        "data_fingerprint": ctx.data_fingerprint,
        "num_train_examples": len(ctx.train_features),
        "lora": {"rank": ctx.config.lora.rank, "alpha": ctx.config.lora.alpha},
        "stage2": {
            "budget": ctx.config.stage2.budget,
            "budget_weight": ctx.config.stage2.budget_weight,
            "target_fraction": ctx.config.stage2.target_fraction,
            "learning_rate": ctx.config.stage2.learning_rate,
            "init_score": ctx.config.stage2.init_score,
        },
    }
    return LayerScores(
        method="ila",
        model_id=ctx.model_id,
        unit_kind=stage2["unit"],
        units=units,
        layout=layer_map.to_dict(),
        meta=meta,
    )
