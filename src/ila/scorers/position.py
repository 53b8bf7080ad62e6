"""The ``first`` and ``last`` scorers: position priors over blocks, no model work.

These are the choices freeze tuning offers (e.g. LLaMA-Factory's ``freeze_trainable_layers``:
train the first or the last n blocks). ``first`` gives block b of N the importance
``(N - b) / N`` (block 0 highest), ``last`` gives ``(b + 1) / N`` (the final block highest);
raw is the block index b. Every module of a block shares its block's score
(``meta["granularity"] = "block"``), and the ranking's tie-break by model order orders the
modules inside a block. Cost: nothing.
"""

from __future__ import annotations

from ila.core.scores import LayerScores
from ila.scorers.base import ScoringContext
from ila.scorers.common import module_scores

__all__ = ["score_first", "score_last"]


def score_first(ctx: ScoringContext) -> LayerScores:
    """Importance decreasing with block index: the first blocks rank first."""
    return _position(ctx, "first")


def score_last(ctx: ScoringContext) -> LayerScores:
    """Importance increasing with block index: the last blocks rank first."""
    return _position(ctx, "last")


def _position(ctx: ScoringContext, which: str) -> LayerScores:
    n = ctx.layer_map.num_blocks
    blocks = [u.block for u in ctx.layer_map.units]
    if which == "first":
        importance = [(n - b) / n for b in blocks]
    else:
        importance = [(b + 1) / n for b in blocks]
    meta = {"granularity": "block", "num_blocks": n}
    return module_scores(ctx, which, importance, [float(b) for b in blocks], meta)
