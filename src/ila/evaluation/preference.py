"""Which of two replies a model prefers: the held-out measure of preference data.

docs/method.md, "Preference optimisation": for each held-out pair (prompt, chosen,
rejected) the model prefers the chosen reply when it gives it the higher log-probability,
summed over the reply's tokens (the template's end of turn included) given the prompt.
``preference_accuracy`` is the share of pairs where it does and ``preference_margin`` the
mean of log p(chosen) - log p(rejected). Both read the policy alone: unlike DPO's implicit
reward they need no reference model, so the base model, an all-units fine-tune and a
selective one are measured on the same scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ila.config import setting
from ila.data.formats import Example
from ila.data.preference import PreferencePair
from ila.data.tokenization import prompt_token_ids, tokenize_examples
from ila.errors import IlaError
from ila.evaluation.metrics import response_token_losses

__all__ = ["preference_metrics"]


def preference_metrics(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    *,
    max_length: int,
    batch_size: int,
    template: str = "auto",
) -> dict[str, Any]:
    """``preference_accuracy``, ``preference_margin`` and ``preference_pairs`` of ``model``.

    A pair whose prompt alone fills ``max_length`` leaves no room for a reply (training
    drops it too): it is skipped and counted in ``preference_skipped_long_prompts``.
    """
    if not pairs:
        raise IlaError(
            "no preference pairs to evaluate; check ",
            setting("data", "data"),
            " and ",
            setting("data", "eval_fraction"),
        )
    kept = [p for p in pairs if len(prompt_token_ids(p.prompt, tokenizer, template)) < max_length]
    if not kept:
        raise IlaError(
            f"every one of the {len(pairs)} preference pairs has a prompt of ",
            setting("data", "max_length"),
            f" {max_length} tokens or more, leaving no room for a reply; raise ",
            setting("data", "max_length"),
        )
    skipped, pairs = len(pairs) - len(kept), kept
    replies = {
        key: _reply_log_probs(
            model,
            tokenizer,
            pairs,
            key,
            max_length=max_length,
            batch_size=batch_size,
            template=template,
        )
        for key in ("chosen", "rejected")
    }
    margins = [c - r for c, r in zip(replies["chosen"], replies["rejected"], strict=True)]
    return {
        "preference_accuracy": sum(m > 0 for m in margins) / len(margins),
        "preference_margin": sum(margins) / len(margins),
        "preference_pairs": len(margins),
        "preference_skipped_long_prompts": skipped,
    }


def _reply_log_probs(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    key: str,
    *,
    max_length: int,
    batch_size: int,
    template: str,
) -> list[float]:
    """log p(reply | prompt) of each pair's ``key`` reply ("chosen" or "rejected"), summed
    over the reply's tokens (docs/method.md, "Preference optimisation")."""
    examples = [
        Example((*p.prompt, {"role": "assistant", "content": getattr(p, key)}), None, p.source)
        for p in pairs
    ]
    features = tokenize_examples(
        examples, tokenizer, max_length=max_length, template=template
    ).features
    if len(features) != len(pairs):
        raise IlaError(
            f"{len(pairs) - len(features)} pairs have no {key} reply token within ",
            setting("data", "max_length"),
            f" {max_length} although their prompts fit; raise ",
            setting("data", "max_length"),
        )
    losses = response_token_losses(
        model,
        features,
        pad_token_id=tokenizer.pad_token_id,
        batch_size=batch_size,
        label=f"preference: {key} replies",
    )
    return [-loss for loss, _ in losses]
