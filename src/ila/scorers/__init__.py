"""Scorers: one file per method that ranks a model's units; ILA is the default.

A scorer is a function ``(ScoringContext) -> LayerScores``. Every scorer writes the same
``layer_scores.json`` schema at the same unit granularity, so every downstream command
works with any of them. Adding a scorer means adding one module here and one entry to
:data:`SCORERS`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable

from ila.errors import IlaError
from ila.scorers.base import ScoringContext

__all__ = ["SCORERS", "ScoringContext", "get_scorer"]

# name -> (module, function, one-line description). Imported lazily: `ila --help` and
# `ila ls scorers` must not import torch.
SCORERS: dict[str, tuple[str, str, str]] = {
    "ila": (
        "ila.scorers.ila",
        "score_ila",
        "ILA (arXiv 2410.17875): LoRA to epsilon-stable, then a learned sigmoid gate per unit",
    ),
}


def get_scorer(name: str) -> Callable[[ScoringContext], object]:
    """The scorer registered as ``name``; a misspelling suggests the closest names."""
    if name not in SCORERS:
        close = difflib.get_close_matches(name, SCORERS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise IlaError(f"--method: unknown scorer '{name}'{hint} (known: {', '.join(SCORERS)})")
    module, function, _ = SCORERS[name]
    return getattr(importlib.import_module(module), function)
