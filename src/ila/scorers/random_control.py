"""The ``random`` scorer: a seeded control ranking, for calibrating every other method.

Importance of each unit is a draw from ``random.Random(train.seed).random()``, taken in
LayerMap order; raw is the same number. No model or data is read, so it costs nothing.
A method whose ranking is no better than this control (on overlap with other methods or
on downstream fine-tuning) has not shown that it measures anything.
"""

from __future__ import annotations

import random

from ila.core.scores import LayerScores
from ila.scorers.base import ScoringContext
from ila.scorers.common import module_scores

__all__ = ["score_random"]


def score_random(ctx: ScoringContext) -> LayerScores:
    """Uniform random importances in [0, 1), reproducible from ``config.train.seed``."""
    seed = ctx.config.train.seed
    rng = random.Random(seed)
    values = [rng.random() for _ in ctx.layer_map.units]
    return module_scores(ctx, "random", values, values, {"seed": seed, "granularity": "module"})
