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
``stage2/summary.json``, ``stage2/gate_trajectory.json`` and rows in ``metrics.jsonl``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from ila.gates import attach_gates, budget_loss, project_to_budget
from ila.layers import LayerMap
from ila.lora import add_lora, lora_update_norms
from ila.rundir import atomic_directory, atomic_write_json
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
    """Train the LoRA adapter of ``model`` until epsilon-stable (or the cap); return a summary."""
    cfg, train = ctx.config.stage1, ctx.config.train
    out = ctx.output_dir / "stage1"
    detector = StabilityDetector(
        epsilon=cfg.epsilon, window=cfg.window, patience=cfg.patience, min_steps=cfg.min_steps
    )
    values = StepValues()
    track_update = cfg.criterion == "loss+update"

    def probe() -> dict[str, float]:
        norm = float(lora_update_norms(model, ctx.layer_map).norm())
        return {"update_norm": norm}

    def stable() -> bool:
        step_values = {"loss": values.loss[-1]}
        if track_update:
            step_values["update_norm"] = values.extra["update_norm"][-1]
        return detector.update(step_values).stable

    args = make_training_args(
        train,
        output_dir=out / "trainer",
        learning_rate=cfg.learning_rate,
        max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup_steps,
        scheduler="constant_with_warmup",
        device=ctx.config.model.device,
    )
    trainer, seconds = run_trainer(
        model,
        args,
        train_features=ctx.train_features,
        collator=ctx.collator,
        callbacks=[
            MetricsLogger("stage1", ctx.output_dir / "metrics.jsonl", values, probe),
            StopWhen(stable),
        ],
    )
    steps = trainer.state.global_step
    examples_per_step = train.batch_size * train.grad_accum * trainer.args.world_size
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
    if trainer.is_world_process_zero():
        with atomic_directory(out / "adapter") as tmp:
            model.save_pretrained(tmp)
        atomic_write_json(out / "summary.json", summary)
    return summary


def run_stage2(ctx: ScoringContext, model: torch.nn.Module) -> dict[str, Any]:
    """Learn the gate scores s on a peft ``model`` whose LoRA weights are then frozen."""
    cfg, train = ctx.config.stage2, ctx.config.train
    out = ctx.output_dir / "stage2"
    for param in model.parameters():
        param.requires_grad_(False)
    gated = attach_gates(model, ctx.layer_map, granularity=cfg.unit, init_score=cfg.init_score)
    callbacks = []
    if cfg.budget == "project":

        def project() -> None:
            project_to_budget(gated.bank.scores, cfg.target_fraction)

        project()
        callbacks.append(AfterStep(project))
    trajectory: list[list[float]] = [gated.gate_values().tolist()]
    values = StepValues()

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

    args = make_training_args(
        train,
        output_dir=out / "trainer",
        learning_rate=cfg.learning_rate,
        max_steps=cfg.steps,
        scheduler="constant",
        device=ctx.config.model.device,
    )
    try:
        trainer, seconds = run_trainer(
            model,
            args,
            train_features=ctx.train_features,
            collator=ctx.collator,
            callbacks=[
                *callbacks,
                MetricsLogger("stage2", ctx.output_dir / "metrics.jsonl", values, record_gates),
            ],
            extra_loss=budget,
        )
        raw = gated.raw_scores()
        gammas = gated.gate_values()
    finally:
        gated.detach()
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
    if trainer.is_world_process_zero():
        atomic_write_json(out / "summary.json", summary)
        atomic_write_json(
            out / "gate_trajectory.json",
            {"gate_names": list(gated.gate_names), "values": trajectory},
        )
    return summary


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
