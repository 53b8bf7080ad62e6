"""Measures of a model on held-out data: the loss on response tokens, exact match.

The loss is averaged over response tokens (the labels of training, ila.data.tokenization),
not over batches, so padding and batch size do not change it; perplexity is ``exp(loss)``.
Answers are compared after :func:`normalize_answer`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import torch

from ila.config import setting
from ila.data.tokenization import (
    IGNORE_INDEX,
    PaddingCollator,
)
from ila.errors import IlaError
from ila.progress import Progress

__all__ = [
    "exact_match_score",
    "extract_answer",
    "model_device",
    "normalize_answer",
    "response_loss",
    "response_token_losses",
]

log = logging.getLogger(__name__)


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
        raise IlaError(
            "the evaluation examples hold no response token; check ", setting("data", "max_length")
        )
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
    device = model_device(model)
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


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def extract_answer(text: str) -> str | None:
    """The answer after the last ``Answer:`` in ``text``: the rest of that line, stripped.

    Only that line is taken so that a generation running on past its answer still
    matches. ``None`` when there is no ``Answer:`` or nothing follows it.
    """
    _, marker, tail = text.rpartition("Answer:")
    if not marker:
        return None
    answer = tail.split("\n", 1)[0].strip()
    return answer or None
