"""Run `ila` as a fresh process, offline and quiet, as the benchmarks do for each measurement."""

from __future__ import annotations

import os
import subprocess
import sys

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def ila(*args: str) -> None:
    """``python -m ila -q ARGS`` in a new process; a failure raises CalledProcessError."""
    subprocess.run(
        [sys.executable, "-m", "ila", "-q", *args], check=True, env=ENV, stdout=subprocess.DEVNULL
    )
