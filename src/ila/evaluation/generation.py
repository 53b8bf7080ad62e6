"""Greedy generation for evaluation, batched with left padding, stopping at the
template's end-of-turn tokens."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ila.data.formats import Example
from ila.data.tokenization import (
    tokenize_examples,
)
from ila.evaluation.metrics import model_device
from ila.progress import Progress

__all__ = ["greedy_generate", "stop_token_ids"]

log = logging.getLogger(__name__)


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
    device = model_device(model)
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
