"""Whether a ranking separates its units or is a tie (docs/method.md, "Output": ties).

A ranking orders the units by importance, ties broken by the unit's position in the model.
When the importances do not separate, that order is the model's order and not a
measurement: a selection of "the top 30%" would then be the first blocks of the model.
Two things make a ranking a tie here:

- its values do not separate: the spread (largest minus smallest) of the values the
  ranking sorts by is at most :data:`TIE_TOLERANCE` of the largest magnitude (for ILA the
  importance sigmoid(s) and the raw s, which breaks ties of a saturated sigmoid; an
  exact tie has spread 0);
- ILA's stage 1 learned nothing: its training loss did not move, every step within
  :data:`TIE_TOLERANCE` (relative) of the first (DPO on pairs whose replies tokenize
  alike stays at log 2; a learning rate too small to change a float32 weight). The gates
  then scale an update that carries nothing about the data.

The result is written into ``layer_scores.json`` (``tie`` and ``separation``), printed,
reported, and selections from a tied ranking are refused unless asked for
(``--allow-tied-ranking``). No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ila.errors import IlaError, Parts, argument

if TYPE_CHECKING:
    from ila.core.scores import LayerScores

__all__ = ["TIE_TOLERANCE", "Separation", "loss_moved", "require_separated", "separation"]

TIE_TOLERANCE = 2.0**-23
"""[choice] Relative spread at or below which values count as equal: float32's machine
epsilon (about 1.2e-7), one rounding step of the float32 arithmetic that computed them, so
values within it cannot be told apart. docs/method.md, "Output", has the measurements."""

ALLOW = argument("allow_tied_ranking")


@dataclass(frozen=True)
class Separation:
    """How far a ranking's values spread, and whether it is a tie (and why)."""

    tie: bool
    spread: float
    """Largest minus smallest importance."""
    relative_spread: float
    """``spread`` over the largest |importance| (0 when every importance is 0)."""
    reason: str | None
    """Why it is a tie, as a clause ("all 28 importances are equal ..."); None otherwise."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "spread": self.spread,
            "relative_spread": self.relative_spread,
            "tolerance": TIE_TOLERANCE,
            "reason": self.reason,
        }


def _relative_spread(values: Sequence[float]) -> tuple[float, float]:
    spread = max(values) - min(values)
    scale = max(abs(v) for v in values)
    return spread, (spread / scale if scale > 0 else 0.0)


def loss_moved(curve: Sequence[float]) -> bool:
    """Whether a training loss curve moved: some step is more than :data:`TIE_TOLERANCE`
    (relative) from the first. A curve of fewer than two finite values counts as moved
    (nothing to judge)."""
    values = [v for v in curve if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(values) < 2:
        return True
    _, relative = _relative_spread(values)
    return relative > TIE_TOLERANCE


def separation(scores: LayerScores) -> Separation:
    """Whether ``scores`` separate their units (module docs); one unit is never a tie."""
    importances = [u.importance for u in scores.units]
    spread, relative = _relative_spread(importances)
    n = len(importances)
    if n < 2:
        return Separation(False, spread, relative, None)
    if scores.meta.get("stage1_loss_moved") is False:
        reason = "ILA's stage-1 loss did not move, so its update carries nothing about the data"
        return Separation(True, spread, relative, reason)
    if relative > TIE_TOLERANCE:
        return Separation(False, spread, relative, None)
    raw_relative = _relative_spread([u.raw for u in scores.units])[1]
    if scores.method == "ila" and raw_relative > TIE_TOLERANCE:
        return Separation(False, spread, relative, None)  # a saturated sigmoid; s ranks
    reason = (
        f"all {n} importances are equal to float32 precision (spread {spread:.3g}), so "
        "their order is the model's"
    )
    return Separation(True, spread, relative, reason)


def require_separated(
    scores: LayerScores, *, origin: str, allow: bool = False, how: Parts = ("pass ", ALLOW)
) -> None:
    """Refuse to select from a tied ranking (one line naming ``origin`` and the reason),
    unless ``allow`` (``--allow-tied-ranking``); ``how`` says how to ask for it."""
    found = separation(scores)
    if not found.tie or allow:
        return
    raise IlaError(
        f"the ranking in {origin} is a tie ({found.reason}): a selection from it would be the "
        "model's first units, not ILA's choice; check the data and the stage-1 learning rate "
        "and score again, or ",
        *how,
        " to select from it anyway",
    )
