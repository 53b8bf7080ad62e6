"""`ila eval`'s measurement of one model: loss, exact match of greedy answers,
multiple choice and lm-eval tasks, as asked (docs/evaluation.md)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ila.config import EvalSettings, setting
from ila.data.formats import Example
from ila.data.tokenization import (
    prompt_token_ids,
    tokenize_examples,
)
from ila.errors import IlaError
from ila.evaluation.generation import greedy_generate, stop_token_ids
from ila.evaluation.metrics import (
    exact_match_score,
    extract_answer,
    normalize_answer,
    response_loss,
)

__all__ = ["EvalResult", "FeaturesOf", "evaluate_model"]

log = logging.getLogger(__name__)

FeaturesOf = Callable[[Sequence[Example]], "list[dict[str, list[int]]] | None"]
"""The tokenized features of the examples given, when the caller has them, else None."""


@dataclass
class EvalResult:
    """Metrics of one model on one dataset, and the generations behind exact match."""

    metrics: dict[str, Any]
    generations: list[dict[str, Any]] = field(default_factory=list)
    lm_eval: dict[str, Any] | None = None


def evaluate_model(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example] | None,
    settings: EvalSettings,
    *,
    max_length: int,
    template: str = "auto",
    features_of: FeaturesOf | None = None,
) -> EvalResult:
    """Measure ``model`` on ``examples``: response loss and perplexity, exact match where
    the examples carry checkable answers, MMLU-layout accuracy and lm-eval tasks when
    asked for. Generations are returned for saving. Preference pairs
    (ila.data.preference) are measured on their chosen replies, plus which of the two
    replies the model prefers (ila.evaluation.preference). ``examples`` None: nothing is
    measured on data, only the multiple choice and lm-eval tasks of ``settings``.
    ``features_of``: the tokenized features of the examples measured, where the caller
    has them already (`ila run` tokenizes its held-out split once); None: tokenize here.

    Phases: held-out loss, preferences, greedy answers (and exact match), multiple
    choice, lm-eval; each reports its progress (ila.progress).
    """
    if examples is None and not (settings.mc_data or settings.lm_eval_tasks):
        raise IlaError(
            "nothing to evaluate: no examples, no ",
            setting("eval", "mc_data"),
            " and no ",
            setting("eval", "lm_eval_tasks"),
        )
    metrics: dict[str, Any] = {}
    generations: list[dict[str, Any]] = []
    if examples is not None:
        metrics, generations = _measure_on_data(
            model,
            tokenizer,
            examples,
            settings,
            max_length=max_length,
            template=template,
            features_of=features_of,
        )
    if settings.mc_data:
        metrics.update(_multiple_choice(model, tokenizer, settings))
    lm_eval_results = None
    if settings.lm_eval_tasks:
        from ila.evaluation.lm_eval_tasks import run_lm_eval

        lm_eval_results = run_lm_eval(
            model,
            tokenizer,
            settings.lm_eval_tasks,
            batch_size=settings.batch_size,
            limit=settings.lm_eval_limit,
        )
    log.info("evaluated: %s", _summary(metrics, lm_eval_results))
    return EvalResult(metrics, generations, lm_eval_results)


def _measure_on_data(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    settings: EvalSettings,
    *,
    max_length: int,
    template: str,
    features_of: FeaturesOf | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Loss, perplexity, preference accuracy and greedy answers on ``examples``; returns
    the metrics and the generation records."""
    from ila.data.preference import PreferencePair

    if not examples:
        raise IlaError(
            "no examples to evaluate; check ",
            setting("data", "data"),
            " and ",
            setting("eval", "split"),
        )
    chosen = list(examples[: settings.max_examples] if settings.max_examples else examples)
    pairs = [e for e in chosen if isinstance(e, PreferencePair)]
    if pairs:
        chosen = [
            Example((*p.prompt, {"role": "assistant", "content": p.chosen}), p.answer, p.source)
            for p in pairs
        ]
    features = features_of(chosen) if features_of is not None else None
    if not features:
        features = tokenize_examples(
            chosen, tokenizer, max_length=max_length, template=template
        ).features
    loss, tokens = response_loss(
        model, features, pad_token_id=tokenizer.pad_token_id, batch_size=settings.batch_size
    )
    metrics: dict[str, Any] = {
        "loss": loss,
        "perplexity": math.exp(loss),
        "num_examples": len(features),
        "response_tokens": tokens,
    }
    if pairs:
        from ila.evaluation.preference import preference_metrics

        metrics.update(
            preference_metrics(
                model,
                tokenizer,
                pairs,
                max_length=max_length,
                batch_size=settings.batch_size,
                template=template,
            )
        )
    generations, answers = _generate_answers(
        model, tokenizer, chosen, settings, max_length=max_length, template=template
    )
    metrics.update(answers)
    return metrics, generations


def _summary(metrics: dict[str, Any], lm_eval: dict[str, Any] | None) -> str:
    """One log line of what was measured."""
    parts = []
    if "loss" in metrics:
        em = metrics["exact_match"]
        parts.append(
            f"{metrics['num_examples']} examples, loss {metrics['loss']:.4f}, perplexity "
            f"{metrics['perplexity']:.3f}, exact match {'n/a' if em is None else f'{em:.3f}'}"
        )
    if "mc_accuracy" in metrics:
        parts.append(
            f"multiple choice {metrics['mc_accuracy']:.3f} on {metrics['mc_questions']} questions"
        )
    if lm_eval is not None:
        parts.append(f"lm-eval tasks {', '.join(sorted(lm_eval))}")
    return "; ".join(parts)


def _generate_answers(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    settings: EvalSettings,
    *,
    max_length: int,
    template: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Greedy answers to the first ``generate_examples`` conversations whose prompt leaves
    room to answer within ``max_length`` (as in training), with exact match where the
    examples carry a checkable answer. Returns the generation records and their metrics."""
    to_generate, prompts, too_long = _prompts_to_answer(
        examples, tokenizer, settings.generate_examples, max_length=max_length, template=template
    )
    metrics: dict[str, Any] = {
        "exact_match": None,
        "exact_match_examples": 0,
        "generation_skipped_long_prompts": too_long,
    }
    if not to_generate:
        return [], metrics
    texts = greedy_generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        stop_ids=stop_token_ids(tokenizer, template),
    )
    generations: list[dict[str, Any]] = []
    checked_pred: list[str | None] = []
    checked_ref: list[str] = []
    for example, text in zip(to_generate, texts, strict=True):
        reference = _reference_answer(example)
        predicted = extract_answer(text)
        record: dict[str, Any] = {
            "source": example.source,
            "prompt": _last_user(example),
            "reference": _last_assistant(example),
            "generation": text,
        }
        if reference is not None:
            checked_pred.append(predicted)
            checked_ref.append(reference)
            record["reference_answer"] = reference
            record["predicted_answer"] = predicted
            record["correct"] = predicted is not None and normalize_answer(
                predicted
            ) == normalize_answer(reference)
        generations.append(record)
    if checked_ref:
        metrics["exact_match"] = exact_match_score(checked_pred, checked_ref)
        metrics["exact_match_examples"] = len(checked_ref)
    return generations, metrics


def _prompts_to_answer(
    examples: Sequence[Example],
    tokenizer: Any,
    count: int,
    *,
    max_length: int,
    template: str,
) -> tuple[list[Example], list[list[int]], int]:
    """The first ``count`` conversations whose prompt is shorter than ``max_length`` tokens,
    their prompt token ids, and how many prompts were skipped as too long."""
    to_generate, prompts, too_long = [], [], 0
    for example in (e for e in examples if not e.is_text):
        if len(to_generate) == count:
            break
        ids = prompt_token_ids(example.messages, tokenizer, template)
        if len(ids) >= max_length:
            too_long += 1
            continue
        to_generate.append(example)
        prompts.append(ids)
    return to_generate, prompts, too_long


def _multiple_choice(model: Any, tokenizer: Any, settings: EvalSettings) -> dict[str, Any]:
    """Accuracy on the MMLU-layout questions of ``settings.mc_data``."""
    from ila.evaluation.multiple_choice import load_mc_questions, mc_accuracy

    questions = load_mc_questions(Path(settings.mc_data), limit=settings.mc_limit)
    mc = mc_accuracy(model, tokenizer, questions, batch_size=settings.batch_size)
    return {
        "mc_accuracy": mc["accuracy"],
        "mc_questions": mc["questions"],
        "mc_by_subject": mc["by_subject"],
    }


def _reference_answer(example: Example) -> str | None:
    if example.answer is not None:
        return example.answer
    last = _last_assistant(example)
    return extract_answer(last) if last else None


def _last_assistant(example: Example) -> str:
    return next((m["content"] for m in reversed(example.messages) if m["role"] == "assistant"), "")


def _last_user(example: Example) -> str:
    return next((m["content"] for m in reversed(example.messages) if m["role"] == "user"), "")
