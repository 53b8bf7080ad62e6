"""The epsilon-stable detector of ILA stage 1 (ILA-METHOD.md, "Stage 1").

ILA learns its mask at the first iteration T at which fine-tuning is epsilon-stable:
from T on, the loss and the LoRA update no longer change materially, so a mask learned
at T is (up to a term in epsilon) as good as one learned at convergence.

[choice] The operational test used here. For a series x_1..x_t (the training loss, and
optionally the norm of the LoRA update) let m_t be the mean of the last W values and
m_{t-W} the mean of the W values before them. The relative change at step t is

    delta_t = |m_t - m_{t-W}| / max(|m_{t-W}|, 1e-12)      (defined once t >= 2W)

A step is *stable* when delta_t < epsilon for every tracked series and t >= min_steps.
Training is epsilon-stable at the first step T that ends a run of ``patience``
consecutive stable steps. Windowed means make the test robust to step-to-step noise; a
loss spike enters a window and breaks the run; a slow steady decline keeps delta_t above
epsilon as long as the loss falls by more than epsilon per window.

Everything here is a pure function of the history (no torch, no Trainer), so it is
unit-tested on synthetic curves; the training loop feeds it one value per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["StabilityDetector", "StabilityStatus", "detect_stable", "relative_change"]


def relative_change(history: Sequence[float], window: int) -> float | None:
    """delta_t of the module docstring for the last step of ``history`` (None if t < 2W)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if len(history) < 2 * window:
        return None
    recent = sum(history[-window:]) / window
    previous = sum(history[-2 * window : -window]) / window
    return abs(recent - previous) / max(abs(previous), 1e-12)


@dataclass(frozen=True)
class StabilityStatus:
    """The detector's verdict after a step."""

    step: int
    stable: bool
    """True once training has been epsilon-stable (stays True afterwards)."""
    stable_step: int | None
    """T: the first step at which training was epsilon-stable, if reached."""
    changes: dict[str, float | None]
    """delta_t of each tracked series at this step."""
    streak: int
    """Consecutive stable steps ending at this step."""


@dataclass
class StabilityDetector:
    """Feed one value per tracked series per step; reports T once it is reached.

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
        if not 0 < self.epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {self.epsilon}")
        if self.window < 1 or self.patience < 1 or self.min_steps < 0:
            raise ValueError("window and patience must be >= 1 and min_steps >= 0")

    def update(self, values: Mapping[str, float]) -> StabilityStatus:
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
            if not math.isfinite(value):
                raise ValueError(f"non-finite {name} ({value}) at step {self.step}")
            history = self.histories.setdefault(name, [])
            history.append(float(value))
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


def detect_stable(
    history: Sequence[float] | Mapping[str, Sequence[float]],
    *,
    epsilon: float,
    window: int,
    patience: int,
    min_steps: int = 0,
) -> int | None:
    """T for a complete history (one series, or several of equal length), or None.

    Steps are counted from 1. Equivalent to feeding the history to a fresh
    :class:`StabilityDetector` step by step.
    """
    series = dict(history) if isinstance(history, Mapping) else {"loss": history}
    lengths = {len(v) for v in series.values()}
    if len(lengths) != 1:
        raise ValueError(f"series have different lengths: {sorted(lengths)}")
    detector = StabilityDetector(
        epsilon=epsilon, window=window, patience=patience, min_steps=min_steps
    )
    for i in range(lengths.pop()):
        status = detector.update({name: values[i] for name, values in series.items()})
        if status.stable:
            return status.stable_step
    return None
