"""Selection: which units to fine-tune, decided from a ranking or typed by hand.

docs/method.md, "Stage 3: use the ranking": tune only the top fraction of the units, or
freeze the bottom fraction and tune the rest (docs/method.md, "Output", defines the
ranking). A :class:`Selection` records the outcome as module unit names in model order,
with the layout of the model they name, so training and :mod:`ila.analysis.exports` never need
the scores again. Exactly one rule per selection: ``tune-top-fraction`` F,
``freeze-bottom-fraction`` F, ``units`` (module unit names) or ``blocks`` (0-based).

Both fraction rules take ``k = top_count(N, F) = max(1, floor(F * N + 0.5))`` units
(round half up, at least one; :func:`ila.core.scores.top_count`): the top k are tuned, or the
bottom k frozen. N counts the ranked units: modules, or blocks for block scores
(``--stage2-unit block``), whose chosen blocks expand to all their module units.
``within_module_type`` applies a fraction rule within each module type instead, as Spectrum
does (docs/method.md, "Stage 3"): ``k_t = top_count(N_t, F)`` of each type's N_t ranked
units, ties broken as in the global ranking; it reads module scores only.
No torch here: a selection is made and read from JSON files alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ila.config import setting
from ila.core.layers import LayerMap, Unit
from ila.core.scores import LayerScores
from ila.errors import IlaError, Parts, Setting, argument, short_repr
from ila.files import atomic_write_json, read_json, require_schema_version
from ila.run_files import SCORES_FILE, SELECTION_FILE
from ila.run_files import SELECTION_SCHEMA_VERSION as SCHEMA_VERSION

__all__ = [
    "RULES",
    "SCHEMA_VERSION",
    "SELECTION_FILE",
    "Selection",
    "SelectionRule",
    "check_scores_match",
    "select_units",
]


RULES = ("tune-top-fraction", "freeze-bottom-fraction", "units", "blocks", "all-units")
FRACTION_RULES = ("tune-top-fraction", "freeze-bottom-fraction")
_WITHIN = argument("within_module_type")


def _rule_setting(rule: str) -> Setting:
    """The argument of a rule (``tune-top-fraction`` is ``tune_top_fraction``)."""
    return argument(rule.replace("-", "_"))


def _listed(rules: Sequence[str], joint: str) -> Parts:
    """The arguments of ``rules``, ``joint`` between them."""
    parts: list[str | Setting] = []
    for rule in rules:
        parts += [joint, _rule_setting(rule)] if parts else [_rule_setting(rule)]
    return tuple(parts)


@dataclass(frozen=True)
class Selection:
    """The module units to tune and to freeze, for one model layout.

    ``selected`` and ``frozen`` partition the layout's unit names and are in model order.
    ``source`` says where the ranking came from: ``method``, ``model_id``,
    ``scores_file``, ``unit_kind`` and ``model_fingerprint`` (ila.model.identity) of the
    scores (all None for hand-typed rules), and ``tied_ranking`` for a fraction rule
    applied to a ranking that is a tie (ila.core.ties; refused unless asked for).
    ``within_module_type``: the fraction rule was applied within each module type
    (docs/method.md, "Stage 3"); a file written before it existed reads as False.
    """

    rule: str
    value: Any
    unit_kind: str
    selected: tuple[str, ...]
    frozen: tuple[str, ...]
    layout: dict[str, Any]
    source: dict[str, Any]
    within_module_type: bool = False

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise IlaError(f"unknown selection rule {self.rule!r}; rules: {', '.join(RULES)}")
        if not isinstance(self.within_module_type, bool):
            raise IlaError(_WITHIN, f" is true or false, got {short_repr(self.within_module_type)}")
        if self.within_module_type and self.rule not in FRACTION_RULES:
            raise IlaError(_WITHIN, f" applies to the fraction rules, not to {self.rule}")
        if self.unit_kind != "module":
            raise IlaError(f"a selection names module units, got unit_kind {self.unit_kind!r}")
        if not self.selected:
            raise IlaError(f"the {self.rule} rule selects no unit, so nothing would be tuned")
        names = [u["name"] for u in self.layout["units"]]
        chosen = set(self.selected)
        expected = (
            tuple(n for n in names if n in chosen),
            tuple(n for n in names if n not in chosen),
        )
        if (self.selected, self.frozen) != expected:
            raise IlaError(
                "selected and frozen units must split the layout's units, in model order"
            )

    def to_dict(self) -> dict[str, Any]:
        num_params = {u["name"]: u["in_features"] * u["out_features"] for u in self.layout["units"]}
        selected_params = sum(num_params[n] for n in self.selected)
        return {
            "schema_version": SCHEMA_VERSION,
            "rule": self.rule,
            "value": self.value,
            "within_module_type": self.within_module_type,
            "unit_kind": self.unit_kind,
            "source": self.source,
            "summary": {
                "num_units": len(num_params),
                "num_selected": len(self.selected),
                "num_frozen": len(self.frozen),
                "selected_weight_fraction": selected_params / max(1, sum(num_params.values())),
                "by_module_type": {
                    kind: {"selected": chosen, "units": total}
                    for kind, (chosen, total) in self.by_module_type().items()
                },
            },
            "selected": list(self.selected),
            "frozen": list(self.frozen),
            "layout": self.layout,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, origin: str = "selection") -> Selection:
        if isinstance(data, dict) and "units" in data and "rule" not in data:
            raise IlaError(
                f"{origin} holds layer scores (a ranking), not a selection; make one with "
                f"'ila select {origin} ",
                argument("tune_top_fraction"),
                " F' (or another rule) first",
            )
        require_schema_version(data, SCHEMA_VERSION, origin=origin, command="ila select")
        try:
            return cls(
                rule=data["rule"],
                value=data["value"],
                unit_kind=data["unit_kind"],
                selected=tuple(data["selected"]),
                frozen=tuple(data["frozen"]),
                layout=data["layout"],
                source=dict(data.get("source") or {}),
                within_module_type=data.get("within_module_type", False),
            )
        except (KeyError, TypeError) as exc:
            raise IlaError(f"{origin}: malformed selection ({exc!r})") from exc

    def save(self, path: Path) -> Path:
        """Write ``selection.json`` atomically (``path`` is the file or its directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / SELECTION_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: Path) -> Selection:
        """Read ``selection.json``, or the one inside a run directory (a directory without
        one is refused, saying how to make one)."""
        path = Path(path)
        if path.is_dir():
            if not (path / SELECTION_FILE).is_file():
                ranked = (path / SCORES_FILE).is_file()
                how: Parts = (
                    "; pass a directory where 'ila select' or 'ila finetune' wrote one, "
                    "or the file itself",
                )
                if ranked:
                    how = (
                        " (it holds a ranking); make one with 'ila select' and ",
                        argument("tune_top_fraction"),
                        " F (or another rule) first",
                    )
                raise IlaError(f"{path} holds no {SELECTION_FILE}", *how)
            path = path / SELECTION_FILE
        return cls.from_dict(read_json(path), origin=str(path))

    def selected_units(self, layer_map: LayerMap) -> list[Unit]:
        """The selected units of ``layer_map``, which must have this selection's layout."""
        _check_layout(self.layout, layer_map, what="selection", hint="re-run 'ila select'")
        return [layer_map.unit(name) for name in self.selected]

    def by_module_type(self) -> dict[str, tuple[int, int]]:
        """Module type -> (units selected, units) of the layout, types in model order (a
        layout without module types, as a test may write one, reads them off the names:
        ``layers.3.mlp.up_proj`` is an ``mlp.up_proj``)."""
        chosen = set(self.selected)
        counts: dict[str, list[int]] = {}
        for unit in self.layout["units"]:
            kind = unit.get("module_type") or unit["name"].split(".", 2)[-1]
            count = counts.setdefault(kind, [0, 0])
            count[0] += unit["name"] in chosen
            count[1] += 1
        return {kind: (selected, total) for kind, (selected, total) in counts.items()}


@dataclass(frozen=True)
class SelectionRule:
    """One stage-3 rule (docs/method.md, "Stage 3"), before it meets a model: ``kind`` is
    one of :data:`RULES`, ``value`` its fraction, unit names, blocks or ``True``.

    A rule typed by hand needs the model's units to become a :class:`Selection`; a job
    that loads the model applies it then (:meth:`apply`). ``within_module_type`` applies a
    fraction rule within each module type (docs/method.md, "Stage 3").
    """

    kind: str
    value: Any
    within_module_type: bool = False

    @classmethod
    def from_kwargs(
        cls,
        *,
        tune_top_fraction: float | None = None,
        freeze_bottom_fraction: float | None = None,
        units: Sequence[str] | None = None,
        blocks: Sequence[int] | None = None,
        all_units: bool = False,
        within_module_type: bool = False,
    ) -> SelectionRule:
        """The one rule given (keywords as :func:`select_units` takes them); no rule or
        several, or ``within_module_type`` with a rule that is not a fraction, is an
        IlaError that names the settings."""
        given = {
            "tune-top-fraction": tune_top_fraction,
            "freeze-bottom-fraction": freeze_bottom_fraction,
            "units": units,
            "blocks": blocks,
            "all-units": True if all_units else None,
        }
        rules = [rule for rule, value in given.items() if value is not None]
        if len(rules) != 1:
            which = _listed(rules, " and ") if rules else ("no rule",)
            raise IlaError("give exactly one of ", *_listed(RULES, ", "), " (got ", *which, ")")
        if not isinstance(within_module_type, bool):
            raise IlaError(_WITHIN, f" is true or false, got {short_repr(within_module_type)}")
        if within_module_type and rules[0] not in FRACTION_RULES:
            raise IlaError(
                _WITHIN,
                " applies ",
                *_listed(FRACTION_RULES, " or "),
                " within each module type; it does not go with ",
                _rule_setting(rules[0]),
            )
        return cls(rules[0], given[rules[0]], within_module_type)

    @property
    def ranked(self) -> bool:
        """Whether the rule reads a ranking (the fraction rules)."""
        return self.kind in FRACTION_RULES

    def keywords(self) -> dict[str, Any]:
        """The rule as keyword arguments of :func:`select_units`."""
        if self.kind == "all-units":
            return {"all_units": True}
        within = {"within_module_type": True} if self.within_module_type else {}
        return {self.kind.replace("-", "_"): self.value, **within}

    def check_ranking(self, scores: LayerScores, *, origin: str = "the scores") -> None:
        """Refuse a ranking this rule cannot read before any model loads: a rule within
        module types needs module scores."""
        if self.within_module_type:
            _require_module_scores(scores, origin)

    def apply(
        self,
        layer_map: LayerMap,
        *,
        scores: LayerScores | None = None,
        scores_file: str | Path | None = None,
    ) -> Selection:
        """The :class:`Selection` this rule makes on ``layer_map``. A ranking of some module
        types only (``--lora-module-types``, or an adapter of some modules ranked with
        ``--from-adapter``) selects among those types; the others stay frozen."""
        kept = scores.layout.get("module_types") if scores is not None else None
        if kept and tuple(kept) != layer_map.module_types:
            layer_map = layer_map.restricted_to(kept)
        return select_units(layer_map, scores=scores, scores_file=scores_file, **self.keywords())


def select_units(
    layer_map: LayerMap,
    *,
    scores: LayerScores | None = None,
    tune_top_fraction: float | None = None,
    freeze_bottom_fraction: float | None = None,
    units: Sequence[str] | None = None,
    blocks: Sequence[int] | None = None,
    all_units: bool = False,
    within_module_type: bool = False,
    scores_file: str | Path | None = None,
) -> Selection:
    """Apply exactly one selection rule to the units of ``layer_map`` (ILA stage 3).

    The fraction rules rank ``scores`` (which must come from this model, see
    :func:`check_scores_match`) and take ``k = top_count(N, F)`` units, rounded half up
    with at least one: the top k are tuned (``tune_top_fraction``), or the bottom k are
    frozen and the rest tuned (``freeze_bottom_fraction``). With block scores N counts
    blocks and each chosen block brings all its module units. ``within_module_type``
    takes ``k_t = top_count(N_t, F)`` of each module type's N_t units instead, as Spectrum
    does (docs/method.md, "Stage 3"; module scores only). ``units`` and ``blocks``
    name the tuned units directly, and ``all_units`` tunes every unit (the baseline that
    selective tuning is compared with); ``scores`` is not used by them. ``scores_file`` is
    only recorded in ``source``, with whether the ranking is a tie (the commands refuse a
    tie before they get here, ila.core.ties). Raises IlaError for no rule or several, a fraction
    outside (0, 1), unknown names, blocks out of range, or a selection that tunes nothing.
    """
    chosen = SelectionRule.from_kwargs(
        tune_top_fraction=tune_top_fraction,
        freeze_bottom_fraction=freeze_bottom_fraction,
        units=units,
        blocks=blocks,
        all_units=all_units,
        within_module_type=within_module_type,
    )
    rule = chosen.kind
    given = {rule: chosen.value}
    source: dict[str, Any] = dict.fromkeys(("method", "model_id", "scores_file", "unit_kind"))
    if rule == "all-units":
        value: Any = True
        tuned = {u.name for u in layer_map.units}
    elif rule == "units":
        value = _as_names(units)
        tuned = {_module_unit(layer_map, name).name for name in value}
    elif rule == "blocks":
        value = list(dict.fromkeys(_as_block(b) for b in _as_sequence(blocks, argument("blocks"))))
        tuned = {u.name for b in value for u in _block_units(layer_map, b)}
    else:
        value = _fraction(given[rule], _rule_setting(rule))
        tuned, source = _by_fraction(layer_map, chosen, value, scores, scores_file)
    return Selection(
        rule=rule,
        value=value,
        unit_kind="module",
        selected=tuple(u.name for u in layer_map.units if u.name in tuned),
        frozen=tuple(u.name for u in layer_map.units if u.name not in tuned),
        layout=layer_map.to_dict(),
        source=source,
        within_module_type=chosen.within_module_type,
    )


def _by_fraction(
    layer_map: LayerMap,
    chosen_rule: SelectionRule,
    value: float,
    scores: LayerScores | None,
    scores_file: str | Path | None,
) -> tuple[set[str], dict[str, Any]]:
    """The units a fraction rule tunes (the top k of ``scores``, or all but the bottom k;
    of each module type with ``within_module_type``) and the ``source`` it records: the
    scores' method, model and whether they tie."""
    rule = chosen_rule.kind
    if scores is None:
        raise IlaError(
            _rule_setting(rule),
            " ranks units, so it needs layer scores: pass ",
            argument("scores"),
            " RUN_OR_JSON",
        )
    origin = str(scores_file or "scores")
    chosen_rule.check_ranking(scores, origin=origin)
    check_scores_match(scores, layer_map, origin=origin)
    within = chosen_rule.within_module_type
    if rule == "tune-top-fraction":
        chosen = scores.top(value, within_module_type=within)
    else:
        chosen = scores.bottom(value, within_module_type=within)
    chosen_units = _expand(scores, layer_map, chosen)
    everything = {u.name for u in layer_map.units}
    tuned = chosen_units if rule == "tune-top-fraction" else everything - chosen_units
    source = {
        "method": scores.method,
        "model_id": scores.model_id,
        "scores_file": None if scores_file is None else str(scores_file),
        "unit_kind": scores.unit_kind,
        "model_fingerprint": scores.meta.get("model_fingerprint"),
        # Chosen from a ranking that is a tie (ila.core.ties): the model's order.
        "tied_ranking": scores.separation().tie,
    }
    if not tuned:
        k = "the k of each module type" if within else "k"
        raise IlaError(
            _rule_setting(rule),
            f" {value} freezes all {len(scores.units)} ranked units ({k} rounds half up), "
            "so nothing would be tuned; pass a smaller fraction",
        )
    return tuned, source


def _require_module_scores(scores: LayerScores, origin: str) -> None:
    """Refuse block scores for a rule within module types (blocks have no module type)."""
    if scores.unit_kind != "module":
        raise IlaError(
            _WITHIN,
            f": {origin} ranks blocks (",
            setting("stage2", "unit"),
            " block), which have no module type; rank modules, or leave ",
            _WITHIN,
            " off",
        )


def check_scores_match(scores: LayerScores, layer_map: LayerMap, *, origin: str = "scores") -> None:
    """Raise IlaError unless ``scores`` rank the units of ``layer_map``'s model.

    The layout stored with the scores must have the same model type, number of blocks and
    unit names; each scored unit must be one of its units (module scores) or one of its
    blocks (block scores). ``origin`` names the scores file in the message.
    """
    hint = "score this model with 'ila score', or pass the scores file made for it"
    _check_layout(scores.layout, layer_map, what=origin, hint=hint)
    if scores.unit_kind == "module":
        expected = [u.name for u in layer_map.units]
    else:
        expected = [layer_map.block_name(b) for b in sorted({u.block for u in layer_map.units})]
    if sorted(scores.names) != sorted(expected):
        raise IlaError(
            f"{origin}: its {scores.unit_kind} units differ from this model's: "
            f"{_differ(scores.names, expected)}; {hint}"
        )


def _check_layout(layout: dict[str, Any], layer_map: LayerMap, *, what: str, hint: str) -> None:
    try:
        theirs = (layout["model_type"], int(layout["num_blocks"]))
        their_names = [u["name"] for u in layout["units"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise IlaError(f"{what} holds no valid model layout ({exc!r}); {hint}") from exc
    ours = (layer_map.model_type, layer_map.num_blocks)
    if theirs != ours:
        raise IlaError(
            f"{what}: made for a {theirs[0]} model with {theirs[1]} blocks, but this is a "
            f"{ours[0]} model with {ours[1]} blocks; {hint}"
        )
    our_names = [u.name for u in layer_map.units]
    if their_names != our_names:
        raise IlaError(
            f"{what}: made for other units than this model's (same ",
            setting("model", "blocks_path"),
            " and ",
            setting("lora", "module_types"),
            f"?): {_differ(their_names, our_names)}; {hint}",
        )


def _differ(theirs: Sequence[str], ours: Sequence[str]) -> str:
    their_set, our_set = set(theirs), set(ours)
    extra = [n for n in theirs if n not in our_set]
    missing = [n for n in ours if n not in their_set]
    parts = []
    if extra:
        parts.append(f"{len(extra)} not in this model (e.g. {', '.join(extra[:3])})")
    if missing:
        parts.append(f"{len(missing)} of this model missing (e.g. {', '.join(missing[:3])})")
    return "; ".join(parts) or "in another order"


def _expand(scores: LayerScores, layer_map: LayerMap, names: Sequence[str]) -> set[str]:
    """Module unit names of the scored units ``names`` (blocks expand to their modules)."""
    if scores.unit_kind == "module":
        return set(names)
    block_of = {u.name: u.block for u in scores.units}
    return {u.name for name in names for u in layer_map.units_in_block(block_of[name])}


def _fraction(value: Any, name: Setting) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise IlaError(name, f" must be a number in (0, 1), got {short_repr(value)}")
    if not (math.isfinite(value) and 0 < value < 1):
        raise IlaError(name, f" must be in (0, 1), got {value}")
    return float(value)


def _as_sequence(value: Any, name: Setting) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise IlaError(name, f" takes a list, got {short_repr(value)}")
    if not value:
        raise IlaError(name, " is empty, so nothing would be tuned")
    return list(value)


def _as_names(units: Any) -> list[str]:
    names = _as_sequence(units, argument("units"))
    return list(dict.fromkeys(str(n) for n in names))


def _as_block(block: Any) -> int:
    if isinstance(block, bool) or not isinstance(block, int):
        raise IlaError(
            argument("blocks"), f" takes block indices (integers), got {short_repr(block)}"
        )
    return block


def _block_units(layer_map: LayerMap, block: int) -> tuple[Unit, ...]:
    try:
        return layer_map.units_in_block(block)
    except IlaError as exc:
        raise IlaError(argument("blocks"), ": ", *exc.parts) from exc


def _module_unit(layer_map: LayerMap, name: str) -> Unit:
    blocks = {layer_map.block_name(b): b for b in range(layer_map.num_blocks)}
    if name in blocks:
        raise IlaError(
            argument("units"),
            f": {name!r} is a block; pass ",
            argument("blocks"),
            f" {blocks[name]} instead",
        )
    try:
        return layer_map.unit(name)
    except IlaError as exc:
        raise IlaError(argument("units"), ": ", *exc.parts) from exc
