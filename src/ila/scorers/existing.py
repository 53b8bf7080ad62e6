"""ILA stage 2 on an update that already exists (docs/method.md, "ILA on an update you
already have").

The paper's mask is over "the parameter changes in each layer during alignment". When
those changes already exist, as a LoRA adapter trained by any tool or as a base and an
aligned checkpoint, ranking them costs stage 2 alone: the gates are learned on the
existing update exactly as on ila's own stage-1 update (:func:`ila.scorers.ila.run_stage2`),
through LoRA gates for an adapter and delta gates for a checkpoint pair.

Two steps, so that every refusal happens before the run directory is written:
:func:`load_existing_update` reads and checks the update (and restricts the units to those
it covers); :func:`rank_existing_update` learns the gates inside the run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ila.config import SourceSettings, setting
from ila.core.layers import LayerMap
from ila.core.lora import lora_update_norms, unit_lora_layer
from ila.core.scores import LayerScores
from ila.errors import IlaError
from ila.files import atomic_write_json
from ila.run_files import STAGE_SUMMARY_FILE
from ila.rundir import RunDir
from ila.scorers.base import ScoringContext
from ila.scorers.ila import ila_scores, run_stage2
from ila.train.parallel import is_main_process

__all__ = [
    "ExistingUpdate",
    "adapted_layer_map",
    "load_existing_update",
    "rank_existing_update",
    "rank_recorded_update",
]

log = logging.getLogger(__name__)


@dataclass
class ExistingUpdate:
    """An update to rank: ``model`` carries it (a peft model for an adapter) or
    ``deltas`` hold it (a checkpoint pair, the model at the base weights)."""

    kind: str  # "adapter" or "model-pair"
    path: str
    model: Any
    layer_map: LayerMap
    deltas: dict[str, torch.Tensor] | None
    facts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def norms(self) -> list[float]:
        """||Delta_i||_F of every unit it covers, in layer-map order."""
        if self.deltas is None:
            return lora_update_norms(self.model, self.layer_map).tolist()
        return [float(self.deltas[u.name].float().norm()) for u in self.layer_map.units]


def load_existing_update(
    source: SourceSettings, model_spec: str, model: Any, layer_map: LayerMap
) -> ExistingUpdate:
    """Read and check the update ``source`` names, for ``model`` (loaded from ``model_spec``)."""
    start = time.perf_counter()
    if source.from_adapter:
        update = _adapter_update(Path(source.from_adapter), model_spec, model, layer_map)
    else:
        from ila.model.pair import aligned_unit_deltas

        deltas = aligned_unit_deltas(model, layer_map, str(source.from_model))
        update = ExistingUpdate("model-pair", str(source.from_model), model, layer_map, deltas)
    update.seconds = time.perf_counter() - start
    return update


def _adapter_update(path: Path, model_spec: str, model: Any, layer_map: LayerMap) -> ExistingUpdate:
    from ila.model.adapters import (
        adapter_settings,
        check_adapter_base,
        load_lora_adapter,
        resolve_adapter,
    )

    flag = setting("source", "from_adapter")
    adapter_dir = resolve_adapter(path, flag=flag)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise IlaError(
            flag,
            f" {path} holds changed weights of a full fine-tune, not a LoRA adapter; "
            "merge them into a model directory and pass it as ",
            setting("source", "from_model"),
        )
    check_adapter_base(adapter_dir, model_spec, allow=False, flag=flag)
    settings = adapter_settings(adapter_dir)
    peft_model = load_lora_adapter(model, adapter_dir, model_spec, flag=flag)
    units, missing = adapted_layer_map(peft_model, layer_map)
    if not units.units:
        peft_model.unload()
        raise IlaError(
            flag,
            f" {adapter_dir} adapts none of ",
            setting("model", "model"),
            f"'s block linear modules "
            f"(target_modules {settings.get('target_modules')}); pass a LoRA adapter of them",
        )
    if missing:
        log.info("%d units are not adapted by %s and get no gate", len(missing), adapter_dir)
    facts = {
        "rank": settings.get("r"),
        "alpha": settings.get("lora_alpha"),
        "target_modules": settings.get("target_modules"),
        "base_model_name_or_path": settings.get("base_model_name_or_path"),
        "not_adapted": missing,
    }
    return ExistingUpdate("adapter", str(adapter_dir), peft_model, units, None, facts)


def adapted_layer_map(peft_model: Any, layer_map: LayerMap) -> tuple[LayerMap, list[str]]:
    """``layer_map`` restricted to the units that carry the LoRA adapter ``default`` of
    ``peft_model`` (the units of a ranking of that adapter), and the names of the others.

    The restricted map may hold no unit; callers refuse that with their own message.
    """
    adapted, missing = [], []
    for unit in layer_map.units:
        layer = unit_lora_layer(peft_model, unit)
        if "default" in getattr(layer, "lora_A", {}):
            adapted.append(unit)
        else:
            missing.append(unit.name)
    kept_types = {u.module_type for u in adapted}
    units = replace(
        layer_map,
        units=tuple(adapted),
        module_types=tuple(t for t in layer_map.module_types if t in kept_types),
    )
    return units, missing


def learn_stage2(
    model: Any,
    *,
    tokenizer: Any,
    layer_map: LayerMap,
    train_features: list[dict[str, list[int]]],
    config: Any,
    output_dir: Path,
    data_fingerprint: str,
    model_id: str = "model",
    deltas: dict[str, torch.Tensor] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """ILA's stage 2 alone (docs/method.md, "Stage 2") on the LoRA update ``model``
    carries, or on ``deltas`` (unit name -> weight change) gated on the base ``model``;
    returns the stage-2 summary (``gates``, ``seconds``, the trajectory's facts).

    ``config`` is a :class:`ila.config.ScoreConfig` (its ``stage2`` settings and training
    precision are used); ``output_dir`` receives ``stage2/`` and ``metrics.jsonl``.
    ``seed`` seeds torch first (the gates' noise and the batch order). For studies of
    stage 2 on stage-1 snapshots; a run ranks an adapter with ``ila score
    --from-adapter`` (:func:`rank_existing_update`).
    """
    from ila.data import PaddingCollator

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    ctx = ScoringContext(
        model=model,
        tokenizer=tokenizer,
        layer_map=layer_map,
        model_id=model_id,
        train_features=train_features,
        collator=PaddingCollator(tokenizer.pad_token_id),
        config=config,
        output_dir=Path(output_dir),
        data_fingerprint=data_fingerprint,
    )
    if seed is not None:
        torch.manual_seed(seed)
    return run_stage2(ctx, model, deltas=deltas)


def rank_existing_update(ctx: ScoringContext, update: ExistingUpdate) -> LayerScores:
    """Stage 2 on ``update`` and the ranking, in ``ctx``'s run directory.

    ``stage1/summary.json`` records where the update came from instead of a training run
    (no T, no loss curve), so reports and ``ila compare`` read the run as any other.
    """
    ctx.layer_map = update.layer_map
    stage1 = {
        "source": update.kind,
        "path": update.path,
        **update.facts,
        "stable": None,
        "T": None,
        "stable_step": None,
        "steps": 0,
        "seconds": update.seconds,
        "loss_curve": [],
        "update_norm_curve": [],
        "ranking_checks": [],
        "method": update.kind,
        "unit_update_norms": update.norms(),
    }
    try:
        scores = rank_recorded_update(ctx, update.model, stage1, deltas=update.deltas)
    finally:
        if update.deltas is None:
            ctx.model = update.model.unload()
    scores.meta["source"] = {"kind": update.kind, "path": update.path, **update.facts}
    return scores


def rank_recorded_update(
    ctx: ScoringContext,
    model: Any,
    stage1: dict[str, Any],
    *,
    deltas: dict[str, torch.Tensor] | None = None,
) -> LayerScores:
    """Stage 2 on the update ``model`` carries (or ``deltas``) and the ranking.

    ``stage1`` is the ``stage1/summary.json`` that records where the update came from
    (written first, on the main process); ``ctx.layer_map`` must name the units the update
    covers. The model is left as :func:`ila.scorers.ila.run_stage2` leaves it: gates
    removed, every parameter frozen (callers restore the flags they need).
    """
    if is_main_process():
        atomic_write_json(ctx.output_dir / "stage1" / STAGE_SUMMARY_FILE, stage1)
        RunDir(ctx.output_dir).mark("stage1")
    stage2 = run_stage2(ctx, model, deltas=deltas)
    return ila_scores(ctx, stage1, stage2)
