"""The stage-1 learning-rate cool-down after the stop (docs/method.md, "Stage 1", cool-down).

At a constant learning rate the LoRA iterate keeps diffusing after the loss has levelled
off, and the mask learned from it moves with it. The cool-down trains C more steps after
the stop S (the stable step T, or the cap) with the learning rate falling linearly to
zero, so the mask is learned from an iterate the schedule has settled rather than from
wherever a constant-rate walk happened to be at S. C = ceil(fraction * S).

Pure functions of the step, the stop and the settings: the Trainer's scheduler and
stopping callback read them (ila.scorers.ila), and tests check the schedule directly.
"""

from __future__ import annotations

import math

__all__ = ["cooldown_length", "learning_rate_factor"]


def cooldown_length(stop_step: int, fraction: float) -> int:
    """C = ceil(fraction * stop_step) steps of cool-down after a stop at ``stop_step``."""
    if stop_step < 0 or not 0 <= fraction <= 1:
        raise ValueError(f"need stop_step >= 0 and fraction in [0, 1], got {stop_step}, {fraction}")
    return math.ceil(fraction * stop_step)


def learning_rate_factor(
    step: int, *, warmup_steps: int, stop_step: int | None, cooldown_steps: int
) -> float:
    """The factor on the learning rate for optimizer step ``step`` (0-based, as LambdaLR).

    Linear warm-up over ``warmup_steps`` (as transformers' ``constant_with_warmup``, so a
    run with a cool-down follows the same path as one without until its stop), then 1 (the
    constant rate of stage 1). Once the
    stop is known (``stop_step`` S, counted in finished steps), the steps after it fall
    linearly: the step with index S + j (the (j+1)-th step after the stop) runs at
    1 - j / C, so the last of the C cool-down steps runs at 1 / C and the rate would reach
    0 at the step after it. The scheduler computes the factor for the next step before the
    stopping rule has read the current one, so the first step after S still runs at the
    full rate in practice; the formula says so too (j = 0 gives 1).
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if stop_step is None or cooldown_steps == 0 or step < stop_step:
        return 1.0
    return max(0.0, 1.0 - (step - stop_step) / cooldown_steps)
