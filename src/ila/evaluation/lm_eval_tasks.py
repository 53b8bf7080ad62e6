"""Optional lm-evaluation-harness tasks on an in-memory model.

The harness (package ``lm-eval``) is not a dependency of `ila`: it is large, and most of
its tasks download data sets from the hub, which offline machines cannot. When it is
installed, ``ila eval --lm-eval-tasks hellaswag,arc_easy`` hands the loaded model (with
its adapter) to the harness's Hugging Face wrapper and keeps the harness's result table.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from ila.errors import IlaError

__all__ = ["require_lm_eval", "run_lm_eval"]


def require_lm_eval() -> None:
    """Fail early, before any model is loaded, when the harness is not installed."""
    if importlib.util.find_spec("lm_eval") is None:
        raise IlaError(
            "--eval-lm-eval-tasks needs lm-evaluation-harness, which is not installed; "
            "run `pip install lm-eval` or drop the flag"
        )


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    batch_size: int,
    limit: int | None = None,
) -> dict[str, Any]:
    """Run ``tasks`` with the harness; returns its per-task results."""
    require_lm_eval()
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        out = lm_eval.simple_evaluate(model=wrapped, tasks=list(tasks), limit=limit)
    except (KeyError, ValueError) as err:
        raise IlaError(f"lm-eval could not run tasks {', '.join(tasks)}: {err}") from err
    if out is None or "results" not in out:
        raise IlaError(f"lm-eval returned no results for tasks {', '.join(tasks)}")
    return out["results"]
