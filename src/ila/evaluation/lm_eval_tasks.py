"""Optional lm-evaluation-harness tasks on an in-memory model.

The harness (package ``lm-eval``) is not a dependency of `ila`: it is large, and most of
its tasks download data sets from the hub, which offline machines cannot. When it is
installed, ``ila eval --lm-eval-tasks hellaswag,arc_easy`` hands the loaded model (with
its adapter) to the harness's Hugging Face wrapper and keeps the harness's result table.

Progress (ila.progress): at a terminal the harness draws its own bars. Elsewhere its
requests of each kind (``loglikelihood``, ``loglikelihood_rolling``, ``generate_until``)
are passed to it in chunks of :data:`CHUNK_REQUESTS`, its bars off, and ila logs the
requests done after each chunk; each request is scored on its own, so the results do not
depend on the chunks (tested against the harness's own call).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

from ila.config import setting
from ila.errors import IlaError
from ila.progress import Progress, progress_bars_enabled

__all__ = ["CHUNK_REQUESTS", "reporting_hflm", "require_lm_eval", "run_lm_eval"]

CHUNK_REQUESTS = 256
"""Requests per call to the harness when ila reports the progress."""


def require_lm_eval() -> None:
    """Fail early, before any model is loaded, when the harness is not installed."""
    if importlib.util.find_spec("lm_eval") is None:
        raise IlaError(
            setting("eval", "lm_eval_tasks"),
            " needs lm-evaluation-harness, which is not installed; "
            "run `pip install lm-eval` or drop the flag",
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

    wrapped = reporting_hflm(model, tokenizer, batch_size=batch_size)
    try:
        out = lm_eval.simple_evaluate(model=wrapped, tasks=list(tasks), limit=limit)
    except (KeyError, ValueError) as err:
        raise IlaError(f"lm-eval could not run tasks {', '.join(tasks)}: {err}") from err
    if out is None or "results" not in out:
        raise IlaError(f"lm-eval returned no results for tasks {', '.join(tasks)}")
    return out["results"]


def reporting_hflm(model: Any, tokenizer: Any, *, batch_size: int) -> Any:
    """The harness's ``HFLM`` around ``model``, reporting its requests as ila progress."""
    return _reporting_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


@functools.cache
def _reporting_class() -> type:
    from lm_eval.models.huggingface import HFLM

    class ReportingHFLM(HFLM):
        """HFLM whose request methods report progress lines (module docstring)."""

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return _in_chunks(super().loglikelihood, requests, "loglikelihood", disable_tqdm)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            method = super().loglikelihood_rolling
            return _in_chunks(method, requests, "loglikelihood_rolling", disable_tqdm)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return _in_chunks(super().generate_until, requests, "generate_until", disable_tqdm)

    return ReportingHFLM


def _in_chunks(
    method: Callable[..., list[Any]], requests: list[Any], kind: str, disable_tqdm: bool
) -> list[Any]:
    """``method(requests)``, or chunk by chunk with a progress line after each."""
    if disable_tqdm or progress_bars_enabled():
        return method(requests, disable_tqdm=disable_tqdm)
    results: list[Any] = []
    with Progress(f"lm-eval {kind}", len(requests), unit="request") as progress:
        for start in range(0, len(requests), CHUNK_REQUESTS):
            chunk = requests[start : start + CHUNK_REQUESTS]
            results.extend(method(chunk, disable_tqdm=True))
            progress.advance(len(chunk))
    return results
