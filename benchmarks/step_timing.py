"""Step times of training configurations measured side by side in one process.

On a machine shared with other jobs, a configuration timed in its own process at its own
time also measures what else ran then: the same step took 3 s in one minute and 6 s in the
next while this was written. Here every configuration trains a few steps with the real
Trainer (``ila.train.trainer.run_trainer``), in turn, for several rounds (the order
rotated each round), and each step's CPU time of this process is recorded beside its wall
time. Each run starts with the same seed, so step i of every configuration in a round sees
the same batch: the ratio of two configurations is taken per step (the same batch, a
minute apart) and its median reported. ``op_profile`` gives the ops that make up a step
(``torch.profiler``), to explain a difference op by op.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ila.config import TrainConfig
from ila.train.trainer import make_training_args, run_trainer

# The profiler's own entries: its step marker and autograd's wrapper around each node.
_WRAPPERS = ("ProfilerStep", "autograd::engine::evaluate_function")


@dataclass
class StepTimes:
    """Per configuration, per round: the seconds of each step after the first."""

    cpu: dict[str, list[list[float]]] = field(default_factory=dict)
    wall: dict[str, list[list[float]]] = field(default_factory=dict)

    def median(self, name: str, *, clock: str = "cpu") -> float:
        """Median step of ``name`` over every round (``clock``: "cpu" or "wall")."""
        rounds = self.cpu[name] if clock == "cpu" else self.wall[name]
        return statistics.median(s for steps in rounds for s in steps)

    def paired(self, name: str, reference: str) -> list[list[float]]:
        """Per round, the CPU-time ratio of ``name`` to ``reference`` step by step (same batch)."""
        return [
            [a / b for a, b in zip(mine, theirs, strict=True)]
            for mine, theirs in zip(self.cpu[name], self.cpu[reference], strict=True)
        ]

    def ratio(self, name: str, reference: str) -> float:
        """Median of the paired step ratios of ``name`` to ``reference`` over every round."""
        return statistics.median(r for steps in self.paired(name, reference) for r in steps)

    def round_ratios(self, name: str, reference: str) -> list[float]:
        """The median paired ratio within each round (how much it moves between rounds)."""
        return [statistics.median(steps) for steps in self.paired(name, reference)]


class _StepClock(TrainerCallback):
    """Records each optimizer step's wall and process CPU seconds."""

    def __init__(self) -> None:
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self._start = (0.0, 0.0)

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


class _ProfilerStep(_StepClock):
    """Advances a ``torch.profiler`` schedule at the end of each optimizer step (and times
    each step, as :class:`_StepClock`)."""

    def __init__(self, profiler: Any) -> None:
        super().__init__()
        self.profiler = profiler

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        self.profiler.step()


def _train(
    model: torch.nn.Module,
    data: tuple[Sequence[dict[str, Any]], Any],
    train: TrainConfig,
    steps: int,
    work: Path,
    callback: TrainerCallback,
) -> None:
    """``steps`` optimizer steps of the supervised Trainer as the fine-tune job sets it up."""
    features, collator = data
    args = make_training_args(
        train, output_dir=work, learning_rate=1e-4, max_steps=steps, scheduler="linear",
        device="cpu",
    )  # fmt: skip
    run_trainer(model, args, train_features=features, collator=collator, callbacks=[callback])


def alternate(
    build: Callable[[str], torch.nn.Module],
    names: Sequence[str],
    data: tuple[Sequence[dict[str, Any]], Any],
    train: TrainConfig,
    *,
    rounds: int,
    steps: int,
    work: Path,
) -> StepTimes:
    """Train each configuration ``build(name)`` for ``steps`` steps, in turn, ``rounds`` times.

    ``data`` is (training features, collator). The first step of every run (optimizer
    state allocated, caches warmed) is dropped. A fresh model per run keeps the weights
    of every run alike and only one configuration in memory.
    """
    if steps < 2:
        raise SystemExit(f"--round-steps {steps}: at least 2 (the first step is dropped)")
    times = StepTimes()
    for r in range(rounds):
        shift = r % len(names)
        for name in [*names[shift:], *names[:shift]]:
            model, clock = build(name), _StepClock()
            _train(model, data, train, steps, work, clock)
            times.cpu.setdefault(name, []).append(clock.cpu[1:])
            times.wall.setdefault(name, []).append(clock.wall[1:])
            del model
            gc.collect()
    return times


def op_profile(
    model: torch.nn.Module,
    data: tuple[Sequence[dict[str, Any]], Any],
    train: TrainConfig,
    *,
    steps: int,
    work: Path,
) -> dict[str, tuple[float, float]]:
    """Per op, (self milliseconds, calls) per step over ``steps`` profiled Trainer steps.

    One step runs first as the profiler's warm-up (recorded, then discarded). The
    profiler's self times are wall time, which on a shared machine includes the time this
    process waited for a core; they are scaled by the profiled steps' CPU time over their
    wall time, so that they add up to CPU time (an estimate per op: the waits are taken to
    fall on each op in proportion to its length). Call counts are exact.
    """
    from torch.profiler import ProfilerActivity, profile, schedule

    plan = schedule(wait=0, warmup=1, active=steps, repeat=1)
    with profile(activities=[ProfilerActivity.CPU], schedule=plan) as profiler:
        clock = _ProfilerStep(profiler)
        _train(model, data, train, steps + 1, work, clock)
    on_cpu = sum(clock.cpu[1:]) / sum(clock.wall[1:])
    return {
        event.key: (on_cpu * event.self_cpu_time_total / 1e3 / steps, event.count / steps)
        for event in profiler.key_averages()
        if not event.key.startswith(_WRAPPERS)
    }


def alternate_profiles(
    build: Callable[[str], torch.nn.Module],
    names: Sequence[str],
    data: tuple[Sequence[dict[str, Any]], Any],
    train: TrainConfig,
    *,
    rounds: int,
    work: Path,
) -> dict[str, dict[str, tuple[float, float]]]:
    """:func:`op_profile` of one step of each configuration, in turn for ``rounds`` rounds
    (order rotated), averaged per op over the rounds."""
    runs: dict[str, list[dict[str, tuple[float, float]]]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in [*names[shift:], *names[:shift]]:
            runs[name].append(op_profile(build(name), data, train, steps=1, work=work))
            gc.collect()
    averaged = {}
    for name, profiles in runs.items():
        keys = {key for profile in profiles for key in profile}
        averaged[name] = {
            key: tuple(
                statistics.fmean(p.get(key, (0.0, 0.0))[i] for p in profiles) for i in (0, 1)
            )
            for key in keys
        }
    return averaged
