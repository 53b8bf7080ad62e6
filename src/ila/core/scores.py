"""LayerScores: one importance value per unit, its ranking, important sets and overlap.

docs/method.md, "Output": the importance of unit i is sigmoid(s_i) at the end of stage 2
(raw s is kept too); units are ranked by importance, descending, ties broken by the
unit's position in the model (earlier first), so a ranking is deterministic. The
important set at fraction K is the top ``k(K) = max(1, floor(K * N + 0.5))`` units
(round half up). Two rankings overlap at K by the Jaccard index of their important sets,
reported next to the Jaccard expected of two random sets of the same size. A ranking
whose values do not separate is a tie (:mod:`ila.core.ties`); the file says so (``tie``).

Every scorer writes this same ``layer_scores.json`` (see :data:`SCHEMA_VERSION`), so every
downstream command works with any scorer. No torch here: reports and comparisons load
scores without a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ila.core.ties import Separation, separation
from ila.errors import IlaError, short_repr
from ila.files import atomic_write_json, read_json, require_schema_version
from ila.run_files import SCORES_FILE
from ila.run_files import SCORES_SCHEMA_VERSION as SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "SCORES_FILE",
    "LayerScores",
    "UnitScore",
    "expected_random_jaccard",
    "jaccard",
    "top_count",
]


@dataclass(frozen=True)
class UnitScore:
    """The score of one unit (a module, or a whole block when unit_kind is 'block')."""

    name: str
    block: int
    module_type: str | None
    """Module type inside the block ('self_attn.q_proj'); None for block units."""
    importance: float
    """The value ranked on: sigmoid(s) for ILA."""
    raw: float
    """The scorer's raw value: s for ILA."""


@dataclass
class LayerScores:
    """Scores of every unit of one model, from one scorer on one dataset."""

    method: str
    model_id: str
    unit_kind: str
    units: list[UnitScore]
    layout: dict[str, Any]
    """Model layout (model_type, blocks_path, num_blocks, unit names): checked when
    scores are applied to a model or compared with other scores."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Scorer-specific facts: stage-1 T, stage-2 steps, seeds, data fingerprint, ..."""

    def __post_init__(self) -> None:
        if self.unit_kind not in ("module", "block"):
            kind = short_repr(self.unit_kind)
            raise IlaError(f"unit_kind must be 'module' or 'block', got {kind}")
        if not self.units:
            raise IlaError("scores hold no unit")
        names = [u.name for u in self.units]
        if len(set(names)) != len(names):
            raise IlaError("scores hold duplicate unit names")
        for unit in self.units:
            if not (math.isfinite(unit.importance) and math.isfinite(unit.raw)):
                raise IlaError(f"unit {unit.name} has a non-finite score")

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.units]

    def ranking(self) -> list[str]:
        """Unit names by importance, descending; ties keep model order.

        For ILA the ranking follows raw s where sigmoid(s) ties (a saturated float), so
        a saturation never turns into a bias towards earlier units.
        """
        by_raw = self.method == "ila"
        order = sorted(
            range(len(self.units)),
            key=lambda i: (-self.units[i].importance, -self.units[i].raw if by_raw else 0.0, i),
        )
        return [self.units[i].name for i in order]

    def top(self, fraction: float, *, within_module_type: bool = False) -> list[str]:
        """The important set at ``fraction``: the first :func:`top_count` names of the ranking.

        ``within_module_type`` (module scores only): the first ``top_count(N_t, fraction)``
        of each module type's N_t units instead, taken from the same ranking (so ties break
        as they do globally); the names come in ranking order either way.
        """
        ranking, parts = self._ranking_parts(within_module_type)
        chosen = {name for part in parts for name in part[: top_count(len(part), fraction)]}
        return [name for name in ranking if name in chosen]

    def bottom(self, fraction: float, *, within_module_type: bool = False) -> list[str]:
        """The least important ``top_count(N, fraction)`` units (of each module type's N_t
        with ``within_module_type``), in ranking order."""
        ranking, parts = self._ranking_parts(within_module_type)
        chosen = {n for part in parts for n in part[len(part) - top_count(len(part), fraction) :]}
        return [name for name in ranking if name in chosen]

    def _ranking_parts(self, within_module_type: bool) -> tuple[list[str], list[list[str]]]:
        """The ranking, and the parts a fraction is taken of: the whole ranking, or (with
        ``within_module_type``) each module type's units in ranking order."""
        ranking = self.ranking()
        if not within_module_type:
            return ranking, [ranking]
        if self.unit_kind != "module":
            raise IlaError("block scores rank blocks, which have no module type to rank within")
        type_of = {u.name: u.module_type for u in self.units}
        parts: dict[str | None, list[str]] = {}
        for name in ranking:
            parts.setdefault(type_of[name], []).append(name)
        return ranking, list(parts.values())

    def separation(self) -> Separation:
        """Whether the ranking separates the units or is a tie (ila.core.ties)."""
        return separation(self)

    def block_scores(self) -> dict[int, float]:
        """Block view: mean importance of each block's units (docs/method.md, "Unit")."""
        sums: dict[int, list[float]] = {}
        for unit in self.units:
            sums.setdefault(unit.block, []).append(unit.importance)
        return {block: sum(v) / len(v) for block, v in sorted(sums.items())}

    def to_dataframe(self) -> Any:
        """One row per unit in model order (name, block, module_type, importance, raw,
        rank: 1 for the most important), as a pandas DataFrame (pandas must be installed)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise IlaError("to_dataframe needs pandas: pip install pandas") from exc
        rank = {name: i + 1 for i, name in enumerate(self.ranking())}
        return pd.DataFrame(
            [
                {
                    "name": u.name,
                    "block": u.block,
                    "module_type": u.module_type,
                    "importance": u.importance,
                    "raw": u.raw,
                    "rank": rank[u.name],
                }
                for u in self.units
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        ranking = self.ranking()
        rank_of = {name: i + 1 for i, name in enumerate(ranking)}
        found = self.separation()
        return {
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "model_id": self.model_id,
            "unit_kind": self.unit_kind,
            # Written for readers, recomputed from the units on load (ila.core.ties).
            "tie": found.tie,
            "separation": found.to_dict(),
            "layout": self.layout,
            "meta": self.meta,
            "units": [
                {
                    "name": u.name,
                    "block": u.block,
                    "module_type": u.module_type,
                    "importance": u.importance,
                    "raw": u.raw,
                    "rank": rank_of[u.name],
                }
                for u in self.units
            ],
            "ranking": ranking,
            "block_scores": {str(k): v for k, v in self.block_scores().items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, origin: str = "scores") -> LayerScores:
        require_schema_version(data, SCHEMA_VERSION, origin=origin, command="ila score")
        try:
            units = [
                UnitScore(
                    name=u["name"],
                    block=int(u["block"]),
                    module_type=u.get("module_type"),
                    importance=float(u["importance"]),
                    raw=float(u["raw"]),
                )
                for u in data["units"]
            ]
            return cls(
                method=data["method"],
                model_id=data["model_id"],
                unit_kind=data["unit_kind"],
                units=units,
                layout=data["layout"],
                meta=data.get("meta", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IlaError(f"{origin}: malformed layer scores ({exc!r})") from exc

    def save(self, path: Path) -> None:
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path) -> LayerScores:
        """Read ``layer_scores.json``, or the one inside a run directory."""
        path = Path(path)
        if path.is_dir():
            path = path / SCORES_FILE
        return cls.from_dict(read_json(path), origin=str(path))


def top_count(num_units: int, fraction: float) -> int:
    """k(K) = max(1, floor(K * N + 0.5)): units in the important set at fraction K."""
    if not 0 < fraction <= 1:
        raise IlaError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, math.floor(fraction * num_units + 0.5))


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    """|A n B| / |A u B| (1.0 for two empty sets)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def expected_random_jaccard(num_units: int, k: int) -> float:
    """E[Jaccard] of two independent uniformly random k-subsets of N units.

    The intersection size I is hypergeometric (draw k of N, k marked):
    P(I = i) = C(k, i) C(N - k, k - i) / C(N, k), and Jaccard = i / (2k - i).
    """
    if not 0 < k <= num_units:
        raise ValueError(f"need 0 < k <= N, got k={k}, N={num_units}")
    total = math.comb(num_units, k)
    expected = 0.0
    for i in range(max(0, 2 * k - num_units), k + 1):
        p = math.comb(k, i) * math.comb(num_units - k, k - i) / total
        expected += p * i / (2 * k - i)
    return expected
