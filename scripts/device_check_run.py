"""One step of the prepared GPU check: a child process with a timeout, inside a budget.

Each step runs in its own process group, so a timeout kills the step's own children too
(a pytest that started training processes, say). A step that the whole check's budget
leaves too little time for is not started. docs/distributed.md, "The prepared GPU check".
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

MIN_STEP_SECONDS = 10.0  # a step is not started with less of the budget left
TAIL_CHARS = 1500  # how much of a failed step's log the summary keeps


class Budget:
    """The whole check's time limit, counted from its creation."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()
        self.started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


@dataclass(frozen=True)
class StepResult:
    """What one step did: ``status`` is passed, failed, timeout, skipped (nothing to do)
    or not_run (a step it needs did not pass, or the budget was spent)."""

    name: str
    status: str
    rc: int | None
    seconds: float
    timeout_s: float | None
    command: list[str]
    log: str | None
    detail: str

    def failed(self, why: str) -> StepResult:
        """This result marked failed, ``why`` before the log's tail."""
        return replace(self, status="failed", detail=f"{why}\n{self.detail}".strip())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for the console: name, status, exit code, seconds."""
        rc = "-" if self.rc is None else str(self.rc)
        text = f"  {self.name:<12} {self.status:<8} rc={rc:<4} {self.seconds:7.1f} s"
        if self.status != "passed" and self.detail:
            text += f"  ({self.detail.splitlines()[0][:150]})"
        return text


def skipped_step(
    name: str, why: str, command: list[str] | None = None, status: str = "skipped"
) -> StepResult:
    """A step that was not started (``skipped``: nothing to do; ``not_run``: cannot run)."""
    return StepResult(name, status, None, 0.0, None, command or [], None, why)


def run_step(
    name: str,
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    budget: Budget,
    log: Path,
    stdout: Path | None = None,
) -> StepResult:
    """Run ``command`` with stderr (and stdout, unless ``stdout`` is given) to ``log``,
    killed after ``timeout`` seconds or when the budget runs out, whichever comes first."""
    limit = min(timeout, budget.left())
    if limit < MIN_STEP_SECONDS:
        why = f"the check's {budget.seconds:.0f} s budget was spent before this step"
        return skipped_step(name, why, command, "not_run")
    start = time.monotonic()
    with ExitStack() as files:
        err = files.enter_context(log.open("w"))
        out = files.enter_context(stdout.open("w")) if stdout is not None else None
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out or err,
            stderr=err if out else subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc: int | None = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    seconds = round(time.monotonic() - start, 2)
    status = "passed" if rc == 0 else ("timeout" if rc is None else "failed")
    detail = "" if rc == 0 else _tail(log)
    if rc is None:
        detail = f"killed after {limit:.0f} s\n{detail}".strip()
    return StepResult(name, status, rc, seconds, round(limit, 1), command, str(log), detail)


def _tail(log: Path) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return text[-TAIL_CHARS:].strip()
