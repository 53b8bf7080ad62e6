"""Helpers shared by the peer scorers: building module-granularity scores, probe batches,
and putting a model back as it was found.

Every scorer writes :class:`ila.core.scores.LayerScores` with ``unit_kind="module"``: one
score per unit of the :class:`ila.core.layers.LayerMap`, in its order. Methods that score whole
blocks give each module of a block its block's score (see :func:`block_scores_to_units`)
and say so with ``meta["granularity"] = "block"``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ila.config import setting
from ila.core.scores import LayerScores, UnitScore
from ila.errors import IlaError
from ila.scorers.base import ScoringContext

__all__ = [
    "PROBE_BATCHES",
    "block_scores_to_units",
    "model_device",
    "module_scores",
    "normalise_by_max",
    "preserved_model_state",
    "probe_batches",
    "to_device",
]

# Forward-only and gradient probes read at most this many batches of
# ``train.batch_size`` examples: enough to average out per-batch noise in a ranking
# (16 x 4 = 64 examples by default) while costing seconds, not a training run.
PROBE_BATCHES = 16


def module_scores(
    ctx: ScoringContext,
    method: str,
    importance: Sequence[float],
    raw: Sequence[float],
    meta: Mapping[str, Any],
) -> LayerScores:
    """LayerScores at module granularity: value i belongs to ``ctx.layer_map.units[i]``."""
    units = ctx.layer_map.units
    if not len(units) == len(importance) == len(raw):
        raise ValueError(
            f"{method}: got {len(importance)} importances and {len(raw)} raw values "
            f"for {len(units)} units"
        )
    scores = [
        UnitScore(u.name, u.block, u.module_type, float(importance[i]), float(raw[i]))
        for i, u in enumerate(units)
    ]
    return LayerScores(
        method=method,
        model_id=ctx.model_id,
        unit_kind="module",
        units=scores,
        layout=ctx.layer_map.to_dict(),
        meta=dict(meta),
    )


def block_scores_to_units(ctx: ScoringContext, per_block: Mapping[int, float]) -> list[float]:
    """One value per unit: the value of the unit's block."""
    return [float(per_block[u.block]) for u in ctx.layer_map.units]


def normalise_by_max(values: Sequence[float]) -> list[float]:
    """``values / max(values)`` for non-negative values (all zeros stay zeros)."""
    top = max(values)
    return [float(v) / top if top > 0 else 0.0 for v in values]


def probe_batches(ctx: ScoringContext, max_batches: int = PROBE_BATCHES) -> list[dict[str, Any]]:
    """Up to ``max_batches`` batches of ``train.batch_size`` training features.

    The features are drawn without replacement in an order shuffled by
    ``random.Random(train.seed)``, so the same seed reads the same examples; batches are
    padded by ``ctx.collator`` and left on the CPU (see :func:`to_device`).
    """
    features = list(ctx.train_features)
    if not features:
        raise IlaError(
            "no training features to score with; check ",
            setting("data", "data"),
            " and ",
            setting("data", "max_length"),
        )
    batch_size = ctx.config.train.batch_size
    order = list(range(len(features)))
    random.Random(ctx.config.train.seed).shuffle(order)
    num_batches = min(max_batches, math.ceil(len(features) / batch_size))
    return [
        ctx.collator([features[j] for j in order[i * batch_size : (i + 1) * batch_size]])
        for i in range(num_batches)
    ]


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def preserved_model_state(model: torch.nn.Module) -> Iterator[None]:
    """Restore every parameter's ``requires_grad`` and every module's train/eval mode on exit.

    Scorers must leave ``ctx.model`` as they found it; peft freezes base weights and the
    probes switch flags and modes, so both are recorded here and put back, even on error.
    """
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        yield
    finally:
        params = dict(model.named_parameters())
        for name, flag in flags.items():
            if name in params:
                params[name].requires_grad_(flag)
        for name, module in model.named_modules():
            if name in modes:
                module.training = modes[name]
