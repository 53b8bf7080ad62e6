"""Units marked on a figure: a run's selection, or a ranking's top set at a fraction.

docs/method.md, "Stage 3: use the ranking": a selection tunes the top fraction of the
units or freezes the bottom fraction. The figures outline the units the rule acts on (the
tuned ones for ``tune-top-fraction``, ``units`` and ``blocks``; the frozen ones for
``freeze-bottom-fraction``), so a reader sees where the chosen units sit in the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ila.core.scores import LayerScores, top_count
from ila.errors import IlaError

__all__ = ["UnitMarks", "marks_from_selection", "top_marks"]


@dataclass(frozen=True)
class UnitMarks:
    """Units of one :class:`LayerScores` to mark, and what they are.

    ``names`` are unit names of the scores (module units, or blocks for block scores);
    ``kind`` is 'tuned' (drawn outlined) or 'frozen' (drawn hatched); ``label`` says
    which units they are in words, for a legend or a caption.
    """

    names: frozenset[str]
    kind: str
    label: str

    def __post_init__(self) -> None:
        if self.kind not in ("tuned", "frozen"):
            raise IlaError(f"unit marks are 'tuned' or 'frozen', got {self.kind!r}")


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def top_marks(scores: LayerScores, fraction: float) -> UnitMarks:
    """The top set of ``scores`` at ``fraction`` (k = top_count(N, fraction) units)."""
    k = top_count(len(scores.units), fraction)
    label = f"top {_percent(fraction)} ({k} of {len(scores.units)} units)"
    return UnitMarks(frozenset(scores.top(fraction)), "tuned", label)


def marks_from_selection(selection: dict[str, Any], scores: LayerScores) -> UnitMarks | None:
    """The units a run's ``selection.json`` acts on, as units of ``scores``.

    None for ``all-units`` (every unit is tuned: nothing to single out). With block
    scores a block is marked when the selection acts on every module unit of it. Raises
    :class:`IlaError` when the selection names units the scores lack (another model).
    """
    from ila.core.selection import Selection

    chosen = Selection.from_dict(selection, origin="selection.json")
    if chosen.rule == "all-units":
        return None
    frozen = chosen.rule == "freeze-bottom-fraction"
    modules = set(chosen.frozen if frozen else chosen.selected)
    names = _as_score_units(modules, chosen.layout, scores)
    if chosen.rule in ("tune-top-fraction", "freeze-bottom-fraction"):
        side = "bottom" if frozen else "top"
        rule = f"{side} {_percent(float(chosen.value))}"
        if chosen.within_module_type:
            rule += " of each module type"
    else:
        rule = f"chosen by --{chosen.rule}"
    what = "frozen" if frozen else "tuned"
    unit = "blocks" if scores.unit_kind == "block" else "units"
    label = f"{what}: {rule} ({len(names)} of {len(scores.units)} {unit})"
    return UnitMarks(frozenset(names), what, label)


def _as_score_units(modules: set[str], layout: dict[str, Any], scores: LayerScores) -> set[str]:
    """The units of ``scores`` that ``modules`` (module unit names) make up."""
    if scores.unit_kind == "module":
        unknown = sorted(modules - set(scores.names))
        if unknown:
            raise IlaError(
                f"selection.json names {len(unknown)} units the scores lack (first: "
                f"{unknown[0]}); it selects units of another model: re-run 'ila select'"
            )
        return modules
    members: dict[int, set[str]] = {}
    for unit in layout["units"]:
        members.setdefault(int(unit["block"]), set()).add(unit["name"])
    missing = sorted({u.block for u in scores.units} - set(members))
    if missing:
        raise IlaError(
            f"selection.json has no unit in block {missing[0]} of the scores; it selects "
            "units of another model: re-run 'ila select'"
        )
    return {u.name for u in scores.units if members[u.block] <= modules}
