"""Optimisers for the stage-2 gate scores s (docs/method.md, "Stage 2", the optimiser).

Adam divides each coordinate's step by that coordinate's own gradient RMS. For gate scores
that means a gate's speed reflects the ratio of its mean gradient to its noise, not the
size of its effect on the loss: a quiet unit (small update, small and steady gradient)
falls as fast as a unit whose gate gradient is large, and a unit whose gate gradient is
noisy is slowed by its own noise. :class:`SharedScaleAdam` keeps Adam's momentum and its
scale-free step size but divides every coordinate by one second moment shared by all
gates (the mean of the squared gradients), so the relative speeds of the gates are the
relative sizes of their expected gradients, as under SGD with momentum, while the step
size stays on Adam's scale (a learning rate of 0.1 moves the typical gate by about 0.1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ila.train.sharding import whole

__all__ = ["SharedScaleAdam"]


class SharedScaleAdam(torch.optim.Optimizer):
    """Adam with one second-moment scalar per parameter group instead of one per coordinate.

    For the group's gradients g (all coordinates of all its parameters):
    m <- b1 m + (1 - b1) g (per coordinate); v <- b2 v + (1 - b2) mean(g^2) (one scalar);
    p <- p - lr * m_hat / (sqrt(v_hat) + eps), with Adam's bias corrections. No weight
    decay. Under FSDP the mean is taken over the whole gradient of each parameter, so
    every process divides by the same scalar.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        b1, b2 = group["betas"]
        squares = sum(float(whole(p.grad).double().pow(2).sum()) for p in params)
        count = sum(whole(p.grad).numel() for p in params)
        state = self.state[params[0]]
        state["shared_step"] = state.get("shared_step", 0) + 1
        state["shared_v"] = b2 * state.get("shared_v", 0.0) + (1 - b2) * squares / count
        t = state["shared_step"]
        denom = math.sqrt(state["shared_v"] / (1 - b2**t)) + group["eps"]
        for p in params:
            m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            p.add_(m, alpha=-group["lr"] / ((1 - b1**t) * denom))
