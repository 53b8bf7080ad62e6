"""What alignment and selective tuning change: held-out loss, exact match, generations.

ILA's claims are about quality after fine-tuning (the paper's Tables 2-5: freezing the
least important layers or tuning only the most important ones keeps or improves
quality). This package measures quality on one model (optionally with an adapter or the
changed weights of a full fine-tune) in the ways that work offline:

* **loss / perplexity** on response tokens only (:mod:`ila.evaluation.metrics`);
* **exact match** of greedy generations (:mod:`ila.evaluation.generation`) on data with
  checkable answers (the embedded ``ila-instruct`` and ``ila-reasoning`` data end every
  response with ``Answer: X``; :func:`ila.evaluation.metrics.extract_answer` reads it back);
* **multiple-choice accuracy** from local files in the MMLU layout
  (:mod:`ila.evaluation.multiple_choice`);
* optionally lm-evaluation-harness tasks (:mod:`ila.evaluation.lm_eval_tasks`);
* DPO's preference accuracy (:mod:`ila.evaluation.preference`).

:mod:`ila.evaluation.evaluate` runs what was asked; the model with its adapter comes from
:mod:`ila.model.inference`. A few generations are saved for reading, since numbers alone
hide how a model answers.
"""

from __future__ import annotations

from ila.evaluation.evaluate import EvalResult, evaluate_model
from ila.evaluation.generation import greedy_generate, stop_token_ids
from ila.evaluation.metrics import (
    exact_match_score,
    normalize_answer,
    response_loss,
    response_token_losses,
)
from ila.model.inference import ModelForEval, load_model_for_eval, merged_for_inference

__all__ = [
    "EvalResult",
    "ModelForEval",
    "evaluate_model",
    "exact_match_score",
    "greedy_generate",
    "load_model_for_eval",
    "merged_for_inference",
    "normalize_answer",
    "response_loss",
    "response_token_losses",
    "stop_token_ids",
]
