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

from ila.errors import IlaError, argument, short_repr
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
    "lora-norm": (
        "ila.scorers.lora_norm",
        "score_lora_norm",
        "||Delta_i||_F of each unit's stage-1 LoRA update (ILA stage 1, no gates)",
    ),
    "grad-norm": (
        "ila.scorers.grad_norm",
        "score_grad_norm",
        "mean ||dL/dW_i||_F of the response loss over a few batches (frozen model)",
    ),
    "block-influence": (
        "ila.scorers.block_influence",
        "score_block_influence",
        "ShortGPT (arXiv 2403.03853): 1 - cos(block input, output); block granularity",
    ),
    "snr": (
        "ila.scorers.snr",
        "score_snr",
        "Spectrum (arXiv 2406.06623): weight singular values above the Marchenko-Pastur edge",
    ),
    "first": (
        "ila.scorers.position",
        "score_first",
        "position prior: the first blocks rank first (freeze tuning); no model work",
    ),
    "last": (
        "ila.scorers.position",
        "score_last",
        "position prior: the last blocks rank first (freeze tuning); no model work",
    ),
    "random": (
        "ila.scorers.random_control",
        "score_random",
        "control: uniform random importances from --seed; no model work",
    ),
}


def get_scorer(name: str) -> Callable[[ScoringContext], object]:
    """The scorer registered as ``name``; a misspelling suggests the closest names."""
    if not isinstance(name, str) or name not in SCORERS:
        close = difflib.get_close_matches(name, SCORERS, n=3) if isinstance(name, str) else []
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        known = ", ".join(SCORERS)
        raise IlaError(
            argument("scorer"), f": unknown scorer {short_repr(name)}{hint} (known: {known})"
        )
    module, function, _ = SCORERS[name]
    return getattr(importlib.import_module(module), function)
