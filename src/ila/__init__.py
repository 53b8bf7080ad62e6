"""ila: find the layers of an LLM that matter for alignment (ILA, arXiv 2410.17875).

The method is described in docs/method.md. Stage 1 fine-tunes LoRA until training is
epsilon-stable, stage 2 learns a relaxed binary mask over each unit's LoRA update under
a sparsity budget, and the mask ranks the units; stage 3 tunes only the units that matter.

Every command is a function here (ila.api): ``ila.score``, ``ila.select``,
``ila.finetune``, ``ila.evaluate``, ``ila.run``, ``ila.compare``, ``ila.report``,
``ila.export`` and ``ila.plan``; ``ila.IlaCallback`` (:mod:`ila.integrations.callback`)
ranks the LoRA adapter a transformers ``Trainer`` is training, inside that run. Importing
this package is cheap: the functions and the callback, and the heavy modules (torch,
transformers) behind them, are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "IlaCallback",
    "__version__",
    "compare",
    "evaluate",
    "export",
    "finetune",
    "plan",
    "report",
    "run",
    "score",
    "select",
]
_API = frozenset(__all__) - {"__version__", "IlaCallback"}

if TYPE_CHECKING:
    from ila.api import compare, evaluate, export, finetune, plan, report, run, score, select
    from ila.integrations.callback import IlaCallback


def __getattr__(name: str) -> Any:
    if name in _API:
        from ila import api

        return getattr(api, name)
    if name == "IlaCallback":
        from ila.integrations.callback import IlaCallback

        return IlaCallback
    raise AttributeError(f"module 'ila' has no attribute {name!r}")
