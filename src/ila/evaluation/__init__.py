"""What alignment and selective tuning change: held-out loss, exact match, generations.

ILA's claims are about quality after fine-tuning (the paper's Tables 2-5: freezing the
least important layers or tuning only the most important ones keeps or improves
quality). This module measures quality on one model (optionally with an adapter or the
changed weights of a full fine-tune) in the ways that work offline:

* **loss / perplexity** on response tokens only (the labels of training, see
  ila.data.tokenization), averaged over tokens, not over batches, so padding and batch size
  do not change it; perplexity is ``exp(loss)``;
* **exact match** of greedy generations on data with checkable answers (the embedded
  ``ila-instruct`` and ``ila-reasoning`` data end every response with ``Answer: X``;
  :func:`ila.data.instruct.extract_answer` reads it back from both the reference and the
  generation); the answers are compared after :func:`normalize_answer`;
* **multiple-choice accuracy** from local files in the MMLU layout (ila.evaluation.multiple_choice);
* optionally lm-evaluation-harness tasks when the ``lm-eval`` package is installed.

A few generations are saved for reading, since numbers alone hide how a model answers.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ila.config import EvalSettings
from ila.data.formats import Example
from ila.data.instruct import extract_answer
from ila.data.tokenization import (
    IGNORE_INDEX,
    PaddingCollator,
    prompt_token_ids,
    tokenize_examples,
)
from ila.errors import IlaError
from ila.progress import Progress

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

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Metrics of one model on one dataset, and the generations behind exact match."""

    metrics: dict[str, Any]
    generations: list[dict[str, Any]] = field(default_factory=list)
    lm_eval: dict[str, Any] | None = None


def normalize_answer(text: str) -> str:
    """Casefold, collapse whitespace, drop a trailing period and thousands separators in
    numbers: ``"1,200."`` and ``"1200"`` match, ``"12"`` and ``"12.5"`` do not."""
    text = " ".join(text.split()).casefold().rstrip(".").strip()
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


def exact_match_score(predictions: Sequence[str | None], references: Sequence[str]) -> float:
    """Fraction of predictions whose normalized answer equals the reference's.

    A prediction with no answer (``None``) counts as wrong.
    """
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not references:
        raise ValueError("exact match of zero examples is undefined")
    hits = sum(
        p is not None and normalize_answer(p) == normalize_answer(r)
        for p, r in zip(predictions, references, strict=True)
    )
    return hits / len(references)


@torch.inference_mode()
def response_loss(
    model: Any, features: Sequence[dict[str, list[int]]], *, pad_token_id: int, batch_size: int
) -> tuple[float, int]:
    """Mean next-token cross-entropy over all labelled (response) tokens, and their count.

    Summed over tokens and divided once, so it does not depend on batching; this is the
    quantity whose exponential is the response perplexity.
    """
    per_example = response_token_losses(
        model, features, pad_token_id=pad_token_id, batch_size=batch_size
    )
    total = sum(loss for loss, _ in per_example)
    count = sum(tokens for _, tokens in per_example)
    if count == 0:
        raise IlaError("the evaluation examples hold no response token; check --max-length")
    loss = total / count
    if not math.isfinite(loss):
        raise IlaError(
            f"evaluation loss is {loss}: the model's outputs are not finite; "
            "check the weights or the adapter"
        )
    return loss, count


@torch.no_grad()
def response_token_losses(
    model: Any,
    features: Sequence[dict[str, list[int]]],
    *,
    pad_token_id: int,
    batch_size: int,
    label: str = "held-out loss",
) -> list[tuple[float, int]]:
    """Per example: the summed next-token cross-entropy of its labelled (response) tokens,
    and their count (the model in eval mode, batched; float32 log-softmax). Progress is
    reported under ``label`` (ila.progress)."""
    collator = PaddingCollator(pad_token_id)
    device = _model_device(model)
    # Batches of similar lengths pad less; each example's sum does not depend on its batch.
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(features)
    was_training = model.training
    model.eval()
    try:
        with Progress(label, len(features), unit="example") as progress:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = collator([features[i] for i in chunk])
                sums, counts = _labelled_loss_sums(model, batch, device)
                for i, total, count in zip(chunk, sums, counts, strict=True):
                    out[i] = (total, count)
                progress.advance(len(chunk))
    finally:
        model.train(was_training)
    return out


def _labelled_loss_sums(
    model: Any, batch: dict[str, torch.Tensor], device: torch.device
) -> tuple[list[float], list[int]]:
    """Per row of a padded batch: the summed cross-entropy of its labelled tokens, and
    their count."""
    batch = {k: v.to(device) for k, v in batch.items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logits = logits[:, :-1].float()
    mask = labels != IGNORE_INDEX
    losses = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), labels.clamp_min(0), reduction="none"
    )
    return (losses * mask).sum(dim=1).tolist(), mask.sum(dim=1).tolist()


def stop_token_ids(tokenizer: Any, template: str) -> list[int]:
    """Token ids that end an assistant turn: EOS, and the token that closes a turn in the
    training template (``<|im_end|>`` for ChatML), read off a rendered probe conversation."""
    probe = Example(
        messages=({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ok"})
    )
    features = tokenize_examples([probe], tokenizer, max_length=64, template=template).features
    labelled = [
        t
        for t, lab in zip(features[0]["input_ids"], features[0]["labels"], strict=True)
        if lab >= 0
    ]
    ids = {labelled[-1]}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


@torch.inference_mode()
def greedy_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_ids: Sequence[int],
) -> list[str]:
    """Greedy continuations of token-id prompts, decoded up to the first stop token, in
    the order of ``prompts``. Batches are left-padded (with the attention mask) and made of
    prompts of similar lengths, which answer as one at a time (tested)."""
    device = _model_device(model)
    stops = set(stop_ids)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with Progress("greedy answers", len(prompts), unit="example") as progress:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                rows = _generate_batch(
                    model,
                    [prompts[i] for i in chunk],
                    tokenizer.pad_token_id,
                    device,
                    max_new_tokens=max_new_tokens,
                    stops=stops,
                )
                for i, row in zip(chunk, rows, strict=True):
                    cut = next((j for j, t in enumerate(row) if t in stops), len(row))
                    outputs[i] = tokenizer.decode(row[:cut], skip_special_tokens=True)
                progress.advance(len(chunk))
    finally:
        model.train(was_training)
    return outputs


def _generate_batch(
    model: Any,
    prompts: Sequence[list[int]],
    pad: int,
    device: torch.device,
    *,
    max_new_tokens: int,
    stops: set[int],
) -> list[list[int]]:
    """The generated token ids of one left-padded batch of prompts (greedy)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    generated = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=sorted(stops),
        pad_token_id=pad,
    )
    return generated[:, width:].tolist()


def evaluate_model(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example] | None,
    settings: EvalSettings,
    *,
    max_length: int,
    template: str = "auto",
) -> EvalResult:
    """Measure ``model`` on ``examples``: response loss and perplexity, exact match where
    the examples carry checkable answers, MMLU-layout accuracy and lm-eval tasks when
    asked for. Generations are returned for saving. Preference pairs
    (ila.data.preference) are measured on their chosen replies, plus which of the two
    replies the model prefers (ila.evaluation.preference). ``examples`` None: nothing is
    measured on data, only the multiple choice and lm-eval tasks of ``settings``.

    Phases: held-out loss, preferences, greedy answers (and exact match), multiple
    choice, lm-eval; each reports its progress (ila.progress).
    """
    if examples is None and not (settings.mc_data or settings.lm_eval_tasks):
        raise IlaError(
            "nothing to evaluate: no examples, no --eval-mc-data and no --eval-lm-eval-tasks"
        )
    metrics: dict[str, Any] = {}
    generations: list[dict[str, Any]] = []
    if examples is not None:
        metrics, generations = _measure_on_data(
            model, tokenizer, examples, settings, max_length=max_length, template=template
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
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Loss, perplexity, preference accuracy and greedy answers on ``examples``; returns
    the metrics and the generation records."""
    from ila.data.preference import PreferencePair

    if not examples:
        raise IlaError("no examples to evaluate; check --data and --eval-split")
    chosen = list(examples[: settings.max_examples] if settings.max_examples else examples)
    pairs = [e for e in chosen if isinstance(e, PreferencePair)]
    if pairs:
        chosen = [
            Example((*p.prompt, {"role": "assistant", "content": p.chosen}), p.answer, p.source)
            for p in pairs
        ]
    tokenized = tokenize_examples(chosen, tokenizer, max_length=max_length, template=template)
    loss, tokens = response_loss(
        model,
        tokenized.features,
        pad_token_id=tokenizer.pad_token_id,
        batch_size=settings.batch_size,
    )
    metrics: dict[str, Any] = {
        "loss": loss,
        "perplexity": math.exp(loss),
        "num_examples": len(tokenized.features),
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
    to_generate, prompts, too_long = [], [], 0
    for example in (e for e in examples if not e.is_text):
        if len(to_generate) == settings.generate_examples:
            break
        ids = prompt_token_ids(example.messages, tokenizer, template)
        if len(ids) >= max_length:
            too_long += 1
            continue
        to_generate.append(example)
        prompts.append(ids)
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


class ModelForEval(NamedTuple):
    """A model loaded for evaluation, and whether its adapter was made on another model."""

    model: Any
    tokenizer: Any
    other_model: str | None


def load_model_for_eval(
    model_spec: str,
    adapter: Path | None,
    *,
    dtype: str = "float32",
    device: str = "auto",
    threads: int | None = None,
    allow_other_model: bool = False,
    quantize_4bit: bool = False,
    max_length: int | None = None,
) -> ModelForEval:
    """Load a model to evaluate: the base, plus ``adapter`` when given.

    ``adapter`` is a peft adapter directory (``adapter_config.json``), or an `ila finetune`
    run directory: its ``adapter/`` (LoRA) or ``changed_weights/`` (full fine-tuning: the
    tuned tensors replace the base's). An adapter made on another model than
    ``model_spec`` (ila.model.identity) is refused unless ``allow_other_model``;
    ``max_length`` is checked against the model's positions (ila.model.loading). A LoRA
    adapter on float32 weights is merged into them (:func:`merged_for_inference`).
    """
    from ila.model.adapters import check_adapter_base, resolve_adapter
    from ila.model.loading import load_model

    adapter_dir = resolve_adapter(adapter) if adapter is not None else None
    model, tokenizer = load_model(
        model_spec,
        dtype=dtype,
        device=device,
        threads=threads,
        quantize_4bit=quantize_4bit,
        max_length=max_length,
    )
    if adapter_dir is None:
        return ModelForEval(model, tokenizer, None)
    other = check_adapter_base(adapter_dir, model_spec, allow=allow_other_model)
    if (adapter_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        try:
            from ila.core.lora import peft_wrapping

            with peft_wrapping():
                model = PeftModel.from_pretrained(model, str(adapter_dir))
        except (ValueError, KeyError, RuntimeError) as err:
            raise IlaError(
                f"adapter {adapter_dir} does not fit model {model_spec}: {err}; pass the base "
                "model the adapter was trained on"
            ) from err
        return ModelForEval(merged_for_inference(model), tokenizer, other)
    changed = adapter_dir / "changed_weights.safetensors"
    return ModelForEval(_apply_changed_weights(model, changed), tokenizer, other)


def merged_for_inference(model: Any) -> Any:
    """A peft LoRA model with its update merged into the base weights (W + alpha/r B A),
    when they are float32; else the model as it is.

    The merged model computes the same function up to float32 rounding (tested: the same
    loss and greedy answers) with none of the adapter's extra modules: a LoRA on every
    unit adds two small matmuls to each linear module, which on a CPU cost more than
    their FLOPs in each generated token (docs/evaluation.md, "Cost"). 16-bit weights keep
    the adapter apart (adding a small update to bf16 weights would round much of it away),
    as do 4-bit ones (merging would quantise the update) and other adapter kinds.
    """
    from peft import PeftType

    config = model.peft_config.get(model.active_adapter)
    weights = [p for n, p in model.named_parameters() if "lora_" not in n]
    if config is None or config.peft_type != PeftType.LORA:
        return model
    if not weights or any(p.dtype != torch.float32 for p in weights):
        return model
    return model.merge_and_unload()


def _apply_changed_weights(model: Any, file: Path) -> Any:
    from safetensors.torch import load_file

    changed = load_file(str(file))
    params = dict(model.named_parameters())
    missing = sorted(set(changed) - set(params))
    if missing:
        raise IlaError(
            f"{file} names {len(missing)} tensors this model lacks (e.g. {missing[0]}); "
            "pass the base model that was fine-tuned"
        )
    with torch.no_grad():
        for name, tensor in changed.items():
            if params[name].shape != tensor.shape:
                raise IlaError(
                    f"{file}: {name} has shape {tuple(tensor.shape)}, the model "
                    f"{tuple(params[name].shape)}; pass the base model that was fine-tuned"
                )
            params[name].copy_(tensor.to(params[name].dtype))
    return model


def _reference_answer(example: Example) -> str | None:
    if example.answer is not None:
        return example.answer
    last = _last_assistant(example)
    return extract_answer(last) if last else None


def _last_assistant(example: Example) -> str:
    return next((m["content"] for m in reversed(example.messages) if m["role"] == "assistant"), "")


def _last_user(example: Example) -> str:
    return next((m["content"] for m in reversed(example.messages) if m["role"] == "user"), "")


def _model_device(model: Any) -> torch.device:
    return next(model.parameters()).device
