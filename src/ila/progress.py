"""Progress of long jobs: bars at a terminal, periodic log lines everywhere else.

Every long loop of ila (the training stages, the evaluation phases, the pairs of
`ila compare`) reports how far it is, how fast it goes and how long is left:

* at a terminal (stderr is a TTY, ``CI`` unset, progress bars not switched off), as a
  bar: the Trainer's own bar for the training stages, a ``tqdm`` bar for the others;
* otherwise (output piped or written to a file, under CI, with ``ila -q``), as an INFO
  line of the ``ila.progress`` logger at most every ``ILA_PROGRESS_INTERVAL`` seconds
  (default 20; 0 reports every step) and one line when the loop ends, so a log file shows
  that a job is alive and when it will end without a line per step.

Every phase also logs its end line (count, time, rate) at a terminal, so the time of each
phase stays in the log. Only the main process of a multi-process launch reports.

This module imports no torch or transformers (``ila compare`` uses it); the Trainer
callback is built on first use by :func:`training_progress`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ila.errors import IlaError
from ila.train.parallel import is_main_process

if TYPE_CHECKING:
    from transformers import TrainerCallback

__all__ = [
    "DEFAULT_INTERVAL",
    "INTERVAL_ENV",
    "Progress",
    "StepOutlook",
    "format_duration",
    "progress_bars_enabled",
    "progress_interval",
    "track",
    "training_progress",
]

INTERVAL_ENV = "ILA_PROGRESS_INTERVAL"
"""Environment variable: seconds between two progress lines (0: a line per update)."""

DEFAULT_INTERVAL = 20.0
"""Seconds between two progress lines when ``ILA_PROGRESS_INTERVAL`` is not set."""

log = logging.getLogger("ila.progress")

T = TypeVar("T")


def progress_bars_enabled() -> bool:
    """Progress bars are for a person at a terminal.

    Off when stderr is not a terminal (pipes, log files), under CI (the ``CI`` variable
    set), and when progress bars are switched off the Hugging Face way
    (``HF_HUB_DISABLE_PROGRESS_BARS=1``, which ``ila -q`` sets); progress lines replace them.
    """
    off = {"1", "true", "yes", "on"}
    if os.environ.get("CI", "").strip().lower() in off:
        return False
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").strip().lower() in off:
        return False
    return sys.stderr.isatty()


def progress_interval() -> float:
    """Seconds between two progress lines: ``ILA_PROGRESS_INTERVAL``, or 20.

    A value that is not a finite number >= 0 is an error naming the variable.
    """
    raw = os.environ.get(INTERVAL_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise IlaError(
            f"{INTERVAL_ENV}={raw!r} is not a number of seconds >= 0; set it to e.g. 20 "
            "(0: a progress line per step) or unset it"
        )
    return value


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"4 min 39 s"`` or ``"2 h 05 min"`` (``"3.5 s"`` under 10 s)."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _format_rate(count: int, seconds: float, unit: str) -> str:
    """``"2.4 examples/s"``, or ``"1.6 s/step"`` when slower than one per second."""
    if count <= 0 or seconds <= 0:
        return f"- {unit}s/s"
    rate = count / seconds
    return f"{rate:.1f} {unit}s/s" if rate >= 1 else f"{seconds / count:.1f} s/{unit}"


class Progress:
    """Done/total of one phase of a long job, reported while it runs (module docstring).

    ``unit`` is singular (``"step"``, ``"example"``); ``total`` may change while the
    phase runs (``update(..., total=...)``), and ``at_most`` says it is an upper bound
    (stage 1 stops when it is stable). ``initial`` counts work done before this process
    started (a resumed stage): it is shown but not counted in the rate. ``bar`` (default:
    :func:`progress_bars_enabled`) draws a tqdm bar instead of the periodic lines; the
    end line is logged either way. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        unit: str = "step",
        initial: int = 0,
        bar: bool | None = None,
        interval: float | None = None,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = self.initial = initial
        self.at_most, self.note = False, ""
        self.active = is_main_process()
        self.interval = progress_interval() if interval is None else interval
        self.start = self.last_line = time.perf_counter()
        self.closed = False
        self._bar = None
        if self.active and (progress_bars_enabled() if bar is None else bar):
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=label, unit=unit, leave=False, file=sys.stderr
            )

    def update(
        self, done: int, *, total: int | None = None, at_most: bool = False, note: str = ""
    ) -> None:
        """Set the count done (and the total, its kind and a note); report when due."""
        if total is not None:
            self.total = total
        self.done, self.at_most, self.note = done, at_most, note
        if not self.active:
            return
        now = time.perf_counter()
        if self._bar is not None:
            if total is not None and self._bar.total != total:
                self._bar.total = total
            self._bar.n = done
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.refresh()
        elif now - self.last_line >= self.interval and not self._complete():
            self.last_line = now
            log.info("%s", self.line(now))

    def _complete(self) -> bool:
        """Everything is done: the end line (:meth:`close`) says the rest."""
        return self.total is not None and self.done >= self.total and not self.at_most

    def advance(self, count: int = 1) -> None:
        """Count ``count`` more units done."""
        self.update(self.done + count)

    def line(self, now: float | None = None) -> str:
        """The progress line: done/total, percent, rate, time left, note."""
        elapsed = (time.perf_counter() if now is None else now) - self.start
        counted = self.done - self.initial
        parts = [f"{self.label}: "]
        if self.total:
            bound = "at most " if self.at_most else ""
            share = min(self.done / self.total, 1.0)
            parts.append(f"{self.done} of {bound}{self.total} {self.unit}s ({share:.0%}), ")
        else:
            parts.append(f"{self.done} {self.unit}s, ")
        parts.append(_format_rate(counted, elapsed, self.unit))
        if self.total and counted > 0:
            left = (self.total - self.done) * elapsed / counted
            parts.append(f", {'at most ' if self.at_most else ''}{format_duration(left)} left")
        if self.note:
            parts.append(f"; {self.note}")
        return "".join(parts)

    def close(self) -> None:
        """Log the end line (count, time, rate) once, and remove the bar."""
        if self.closed:
            return
        self.closed = True
        if not self.active:
            return
        if self._bar is not None:
            self._bar.close()
        elapsed = time.perf_counter() - self.start
        counted = self.done - self.initial
        log.info(
            "%s: %d %ss in %s (%s)%s",
            self.label,
            self.done,
            self.unit,
            format_duration(elapsed),
            _format_rate(counted, elapsed, self.unit),
            f"; {self.note}" if self.note else "",
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()  # a failed phase gets no end line, and no bar left behind
            self.closed = True


def track(
    items: Iterable[T], label: str, *, total: int | None = None, unit: str = "item"
) -> Iterator[T]:
    """Yield ``items``, reporting them as a :class:`Progress` (``total``: ``len(items)``
    when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(label, total, unit=unit) as progress:
        for item in items:
            yield item
            progress.advance()


@dataclass(frozen=True)
class StepOutlook:
    """What a training stage knows of its end after a step (see :func:`training_progress`).

    ``total``: the steps it will run now; ``at_most``: that is a cap, it may stop earlier
    (stage 1 before it is stable); ``note``: e.g. the last stopping check.
    """

    total: int
    at_most: bool = False
    note: str = ""


def training_progress(
    label: str, outlook: Callable[[], StepOutlook] | None = None
) -> TrainerCallback:
    """A Trainer callback that reports the optimizer steps of a stage as progress lines.

    Updated from the Trainer's per-step logs (ila's stages log every step), after the
    callbacks added before it. The total is the Trainer's ``max_steps`` unless
    ``outlook`` (asked at every update) says otherwise. For the stages run without the
    Trainer's bars (ila.train.trainer adds it when the bars are off); draws no bar itself.
    """
    return _training_callback_class()(label, outlook)


@functools.cache
def _training_callback_class() -> type:
    """The callback class, made on first use so that importing this module stays cheap."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def __init__(self, label: str, outlook: Callable[[], StepOutlook] | None) -> None:
            self.label, self.outlook = label, outlook
            self.progress: Progress | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.progress = Progress(
                    self.label, state.max_steps, initial=state.global_step, bar=False
                )

        def on_log(self, args, state, control, logs=None, **kwargs):
            # After the stage's own callbacks have read the step's loss (the stopping rule).
            if self.progress is None or not logs or "loss" not in logs:
                return
            if self.outlook is None:
                self.progress.update(state.global_step)
                return
            seen = self.outlook()
            self.progress.update(
                state.global_step, total=seen.total, at_most=seen.at_most, note=seen.note
            )

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.close()

    return TrainingProgress
