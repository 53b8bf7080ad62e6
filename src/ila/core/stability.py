"""The epsilon-stable detectors of ILA stage 1 (docs/method.md, "Stage 1").

ILA learns its mask at the first iteration T at which fine-tuning is epsilon-stable:
from T on, the loss and the LoRA update no longer change materially, so a mask learned
at T is (up to a term in epsilon) as good as one learned at convergence. The paper gives
no operational test; this module holds the project's two [choice]s, both pure functions
of a history (no torch, no Trainer), unit-tested on synthetic curves.

**Drop rule** (:class:`DropDetector`, criteria ``drop`` and ``drop+ranking``). Checks
happen every W steps on non-overlapping windows: window c holds steps (c-1)W+1 .. cW and
has mean m_c. At check c >= 2 let

    drop_c   = m_1 - m_c                    (what training has achieved so far)
    change_c = |m_c - m_{c-1}|              (what the last window still moved)
    se_c     = sigma_c * sqrt(2 / W)        (noise of a difference of two window means)

where sigma_c is the per-step noise, estimated from the first differences of the last
2W losses (sigma^2 = mean(d^2) / 2; a trend only inflates it, which is conservative).
Check c is *stable* when the drop is real, drop_c > z * se_c (z = 3), and the last window
moved the loss by at most epsilon of that drop, change_c <= epsilon * drop_c; with
``drop+ranking`` also the important set implied by the per-unit update norms
||Delta_i|| (the top ``rank_fraction``) must have moved little since the last check:
Jaccard(top set at c, top set at c-1) >= 1 - rank_epsilon. T is the step that ends
``patience`` consecutive stable checks (and is >= ``min_steps``). Consequences, each tested:
- a flat noisy series never becomes stable (it has no significant drop);
- adding a constant to the loss (another dataset's floor) does not move T: the test is
  relative to the drop, not to the loss level;
- successive checks share no step, so ``patience`` counts independent evidence.

**Relative rule** (:class:`StabilityDetector`, criteria ``loss`` and ``loss+update``),
the project's first rule, kept as a named option: with m_t the mean of the last W values
of a series and m_{t-W} the mean of the W before, delta_t = |m_t - m_{t-W}| / |m_{t-W}|;
a step is stable when delta_t < epsilon for every tracked series, and T ends
``patience`` consecutive stable *steps* (whose windows overlap). Measured weaknesses
(docs/method.md): it fires on pure noise at its earliest possible step 2W + P - 1, and a
higher loss floor makes it fire earlier.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ila.config import Stage1Config

__all__ = [
    "CRITERIA",
    "DROP_SIGNIFICANCE",
    "Detector",
    "DropDetector",
    "StabilityDetector",
    "StabilityStatus",
    "detect_stable",
    "make_detector",
    "relative_change",
    "stage1_detector",
    "standardise_within",
    "top_set",
]

CRITERIA = ("drop+ranking", "drop", "loss", "loss+update")
"""Stage-1 stopping criteria: the drop rule (with or without the ranking check) and the
first, relative rule (on the loss, or the loss and the update norm)."""

DROP_SIGNIFICANCE = 3.0
"""z of the drop rule: the loss must have fallen by more than z noise standard errors."""


@dataclass(frozen=True)
class StabilityStatus:
    """A detector's verdict after a step."""

    step: int
    stable: bool
    """True once training has been epsilon-stable (stays True afterwards)."""
    stable_step: int | None
    """T: the first step at which training was epsilon-stable, if reached."""
    changes: dict[str, float | None]
    """The tested quantities at this step (None where not defined yet)."""
    streak: int
    """Consecutive stable checks (drop rule) or steps (relative rule) ending here."""


class Detector(Protocol):
    """What stage 1 needs of a stopping rule."""

    stable_step: int | None

    def wants_unit_values(self, step: int) -> bool:
        """True when :meth:`update` for ``step`` needs the per-unit update norms."""
        ...

    def update(
        self, values: Mapping[str, float], unit_values: Sequence[float] | None = None
    ) -> StabilityStatus: ...


def relative_change(history: Sequence[float], window: int) -> float | None:
    """delta_t of the relative rule for the last step of ``history`` (None if t < 2W)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if len(history) < 2 * window:
        return None
    recent = sum(history[-window:]) / window
    previous = sum(history[-2 * window : -window]) / window
    return abs(recent - previous) / max(abs(previous), 1e-12)


def top_set(values: Sequence[float], fraction: float) -> frozenset[int]:
    """Indices of the top k = max(1, floor(fraction * N + 0.5)) values (ties: earlier first)."""
    k = max(1, math.floor(fraction * len(values) + 0.5))
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return frozenset(order[:k])


def standardise_within(values: Sequence[float], groups: Sequence[str]) -> list[float]:
    """Each value as a z-score within its group (0 for a group whose values are all equal)."""
    if len(values) != len(groups):
        raise ValueError(f"{len(values)} values but {len(groups)} groups")
    members: dict[str, list[float]] = {}
    for value, group in zip(values, groups, strict=True):
        members.setdefault(group, []).append(value)
    stats = {}
    for group, xs in members.items():
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
        stats[group] = (mean, sd)
    return [
        (v - stats[g][0]) / stats[g][1] if stats[g][1] > 0 else 0.0
        for v, g in zip(values, groups, strict=True)
    ]


def _jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def _check_rule(
    epsilon: float, window: int, patience: int, min_steps: int, *, min_window: int
) -> None:
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    if window < min_window or patience < 1 or min_steps < 0:
        raise ValueError(
            f"window must be >= {min_window}, patience >= 1 and min_steps >= 0; got "
            f"{window}, {patience}, {min_steps}"
        )


def _check_value(name: str, value: float, step: int) -> float:
    if not math.isfinite(value):
        raise ValueError(f"non-finite {name} ({value}) at step {step}")
    return float(value)


@dataclass
class DropDetector:
    """The drop rule of the module docstring; feed one loss per step.

    Args:
        epsilon: the last window may move the loss by at most this fraction of the drop.
        window: W, steps per window and between checks.
        patience: consecutive stable checks required.
        min_steps: T is never before this step.
        rank_epsilon: with a value, the ranking check is on: consecutive top sets of the
            per-unit update norms must overlap with Jaccard >= 1 - rank_epsilon.
        rank_fraction: the top fraction of units whose set is compared.
        unit_groups: with a group per unit (its module type), the norms are standardised
            within each group before the top set is taken, so the set cannot be fixed by
            which module shapes get the largest updates (docs/method.md, Stage 1).
    """

    epsilon: float
    window: int
    patience: int
    min_steps: int = 0
    rank_epsilon: float | None = None
    rank_fraction: float = 0.25
    unit_groups: Sequence[str] | None = None
    losses: list[float] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    top_sets: list[frozenset[int]] = field(default_factory=list)
    streak: int = 0
    stable_step: int | None = None
    step: int = 0

    def __post_init__(self) -> None:
        _check_rule(self.epsilon, self.window, self.patience, self.min_steps, min_window=2)
        if self.rank_epsilon is not None and not 0 <= self.rank_epsilon < 1:
            raise ValueError(f"rank_epsilon must be in [0, 1), got {self.rank_epsilon}")
        if not 0 < self.rank_fraction < 1:
            raise ValueError(f"rank_fraction must be in (0, 1), got {self.rank_fraction}")

    def wants_unit_values(self, step: int) -> bool:
        return self.rank_epsilon is not None and step % self.window == 0

    def update(
        self, values: Mapping[str, float], unit_values: Sequence[float] | None = None
    ) -> StabilityStatus:
        """Record this step's loss (``{"loss": x}``); at check steps also the unit norms.

        A non-finite value is an error: a NaN loss is a failed run, never "stable".
        """
        if set(values) != {"loss"}:
            raise ValueError(f"the drop rule tracks the loss only, got {sorted(values)}")
        self.step += 1
        self.losses.append(_check_value("loss", values["loss"], self.step))
        changes: dict[str, float | None] = {}
        if self.step % self.window == 0:
            changes = self._check(unit_values)
        return StabilityStatus(
            step=self.step,
            stable=self.stable_step is not None,
            stable_step=self.stable_step,
            changes=changes,
            streak=self.streak,
        )

    def _check(self, unit_values: Sequence[float] | None) -> dict[str, float | None]:
        w = self.window
        self.means.append(sum(self.losses[-w:]) / w)
        ranking_overlap = None
        if self.rank_epsilon is not None:
            if unit_values is None:
                raise ValueError(f"step {self.step} is a check: the unit values are needed")
            checked = [_check_value("unit value", v, self.step) for v in unit_values]
            if self.unit_groups is not None:
                checked = standardise_within(checked, self.unit_groups)
            current = top_set(checked, self.rank_fraction)
            if self.top_sets:
                ranking_overlap = _jaccard(current, self.top_sets[-1])
            self.top_sets.append(current)
        if len(self.means) < 2:
            return {"drop": None, "change": None, "noise_se": None, "ranking_overlap": None}
        recent = self.losses[-2 * w :]
        diffs = [b - a for a, b in pairwise(recent)]
        sigma = math.sqrt(sum(d * d for d in diffs) / (2 * len(diffs)))
        se = sigma * math.sqrt(2 / w)
        drop = self.means[0] - self.means[-1]
        change = abs(self.means[-1] - self.means[-2])
        stable = drop > DROP_SIGNIFICANCE * se and change <= self.epsilon * drop
        if self.rank_epsilon is not None:
            stable = stable and ranking_overlap is not None
            stable = stable and ranking_overlap >= 1 - self.rank_epsilon
        self.streak = self.streak + 1 if stable else 0
        ready = self.streak >= self.patience and self.step >= self.min_steps
        if self.stable_step is None and ready:
            self.stable_step = self.step
        return {"drop": drop, "change": change, "noise_se": se, "ranking_overlap": ranking_overlap}


@dataclass
class StabilityDetector:
    """The relative rule of the module docstring; one value per tracked series per step.

    Args:
        epsilon: relative change below which a step counts as stable.
        window: W, steps per window.
        patience: consecutive stable steps required.
        min_steps: no step before this one counts as stable.
    """

    epsilon: float
    window: int
    patience: int
    min_steps: int = 0
    histories: dict[str, list[float]] = field(default_factory=dict)
    streak: int = 0
    stable_step: int | None = None
    step: int = 0

    def __post_init__(self) -> None:
        _check_rule(self.epsilon, self.window, self.patience, self.min_steps, min_window=1)

    def wants_unit_values(self, step: int) -> bool:
        return False

    def update(
        self, values: Mapping[str, float], unit_values: Sequence[float] | None = None
    ) -> StabilityStatus:
        """Record this step's values (e.g. ``{"loss": 1.7}``) and return the verdict.

        A non-finite value is an error: a NaN loss is a failed run, never "stable".
        """
        if not values:
            raise ValueError("update() needs at least one tracked value")
        if self.histories and set(values) != set(self.histories):
            raise ValueError(
                f"tracked series changed: {sorted(values)} vs {sorted(self.histories)}"
            )
        self.step += 1
        changes: dict[str, float | None] = {}
        for name, value in values.items():
            history = self.histories.setdefault(name, [])
            history.append(_check_value(name, value, self.step))
            changes[name] = relative_change(history, self.window)
        step_stable = self.step >= self.min_steps and all(
            c is not None and c < self.epsilon for c in changes.values()
        )
        self.streak = self.streak + 1 if step_stable else 0
        if self.stable_step is None and self.streak >= self.patience:
            self.stable_step = self.step
        return StabilityStatus(
            step=self.step,
            stable=self.stable_step is not None,
            stable_step=self.stable_step,
            changes=changes,
            streak=self.streak,
        )


def make_detector(
    criterion: str,
    *,
    epsilon: float,
    window: int,
    patience: int,
    min_steps: int = 0,
    rank_epsilon: float = 0.1,
    rank_fraction: float = 0.25,
    unit_groups: Sequence[str] | None = None,
) -> Detector:
    """The detector of a stage-1 ``criterion`` (one of :data:`CRITERIA`); ``unit_groups``
    (a module type per unit) standardises the ranking check's norms within each type."""
    if criterion in ("drop", "drop+ranking"):
        return DropDetector(
            epsilon=epsilon,
            window=window,
            patience=patience,
            min_steps=min_steps,
            rank_epsilon=rank_epsilon if criterion == "drop+ranking" else None,
            rank_fraction=rank_fraction,
            unit_groups=unit_groups,
        )
    if criterion in ("loss", "loss+update"):
        return StabilityDetector(
            epsilon=epsilon, window=window, patience=patience, min_steps=min_steps
        )
    raise ValueError(f"unknown stage-1 criterion {criterion!r}; known: {', '.join(CRITERIA)}")


def stage1_detector(cfg: Stage1Config, unit_groups: Sequence[str] | None = None) -> Detector:
    """The detector of a stage-1 config's stopping rule (its criterion and settings);
    ``unit_groups`` as in :func:`make_detector`."""
    return make_detector(
        cfg.criterion,
        epsilon=cfg.epsilon,
        window=cfg.window,
        patience=cfg.patience,
        min_steps=cfg.min_steps,
        rank_epsilon=cfg.rank_epsilon,
        rank_fraction=cfg.rank_fraction,
        unit_groups=unit_groups,
    )


def detect_stable(
    history: Sequence[float] | Mapping[str, Sequence[float]],
    *,
    epsilon: float,
    window: int,
    patience: int,
    min_steps: int = 0,
    criterion: str = "loss",
    unit_values: Mapping[int, Sequence[float]] | None = None,
    rank_epsilon: float = 0.1,
    rank_fraction: float = 0.25,
    unit_groups: Sequence[str] | None = None,
) -> int | None:
    """T for a complete history (one series, or several of equal length), or None.

    Steps are counted from 1. ``unit_values`` maps check steps to per-unit values (the
    ``drop+ranking`` criterion). Equivalent to feeding the history to a fresh detector
    step by step; used to apply a rule offline to recorded curves.
    """
    series = dict(history) if isinstance(history, Mapping) else {"loss": history}
    lengths = {len(v) for v in series.values()}
    if len(lengths) != 1:
        raise ValueError(f"series have different lengths: {sorted(lengths)}")
    detector = make_detector(
        criterion,
        epsilon=epsilon,
        window=window,
        patience=patience,
        min_steps=min_steps,
        rank_epsilon=rank_epsilon,
        rank_fraction=rank_fraction,
        unit_groups=unit_groups,
    )
    for i in range(lengths.pop()):
        step = i + 1
        units = None
        if detector.wants_unit_values(step):
            if unit_values is None or step not in unit_values:
                raise ValueError(f"no unit values for check step {step}")
            units = unit_values[step]
        status = detector.update({n: v[i] for n, v in series.items()}, units)
        if status.stable:
            return status.stable_step
    return None
