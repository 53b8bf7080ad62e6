"""The ``block-influence`` scorer: ShortGPT's Block Influence (Men et al., arXiv 2403.03853).

For block i with input hidden states X_i and output X_{i+1}, ShortGPT defines
BI_i = 1 - E_{X,t}[ X_{i,t} . X_{i+1,t} / (||X_{i,t}|| ||X_{i+1,t}||) ]: a block that
barely turns its input (output ~ input, cosine ~ 1) has influence ~ 0 and is the first
to prune. Here the expectation is the mean over every non-pad token (attention_mask 1)
of up to :data:`ila.scorers.common.PROBE_BATCHES` batches of ``train.batch_size``
training examples (prompt and response tokens alike), drawn in an order seeded by
``train.seed``. X_i and X_{i+1} are read by forward hooks on the block modules, so they
are exactly the block's input and output residual stream (not the final-norm output HF
reports as the last hidden state).

It is a block-level method: every module of block i gets importance = raw = BI_i and
``meta["granularity"] = "block"``. Cost: at most PROBE_BATCHES forward passes, no
gradient, no change to the model (hooks are removed, the mode restored).
"""

from __future__ import annotations

from typing import Any

import torch

from ila.core.scores import LayerScores
from ila.scorers.base import ScoringContext
from ila.scorers.common import (
    PROBE_BATCHES,
    block_scores_to_units,
    model_device,
    module_scores,
    preserved_model_state,
    probe_batches,
    to_device,
)

__all__ = ["score_block_influence"]


def score_block_influence(ctx: ScoringContext) -> LayerScores:
    """Rank blocks by 1 - mean cosine(input, output) over non-pad tokens."""
    model = ctx.model
    blocks = model.get_submodule(ctx.layer_map.blocks_path)
    batches = probe_batches(ctx, PROBE_BATCHES)
    device = model_device(model)
    cosine_sums = torch.zeros(len(blocks), dtype=torch.float64)
    num_tokens = 0
    inputs: dict[int, torch.Tensor] = {}
    mask: list[torch.Tensor] = []

    def save_input(index: int):
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            inputs[index] = args[0] if args else kwargs["hidden_states"]

        return hook

    def add_cosine(index: int):
        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            cos = torch.nn.functional.cosine_similarity(
                inputs.pop(index).float(), out.float(), dim=-1
            )
            cosine_sums[index] += float((cos * mask[0]).sum())

        return hook

    handles = []
    try:
        for index, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(save_input(index), with_kwargs=True))
            handles.append(block.register_forward_hook(add_cosine(index), with_kwargs=True))
        with preserved_model_state(model), torch.no_grad():
            model.eval()
            for batch in batches:
                batch = to_device(batch, device)
                mask[:] = [batch["attention_mask"].float()]
                num_tokens += int(batch["attention_mask"].sum())
                model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    use_cache=False,
                )
    finally:
        for handle in handles:
            handle.remove()
    influence = (1.0 - cosine_sums / num_tokens).tolist()
    per_block = dict(enumerate(influence))
    values = block_scores_to_units(ctx, per_block)
    meta = {
        "granularity": "block",
        "block_influence": influence,
        "num_batches": len(batches),
        "num_tokens": num_tokens,
        "batch_size": ctx.config.train.batch_size,
        "seed": ctx.config.train.seed,
        "data_fingerprint": ctx.data_fingerprint,
    }
    return module_scores(ctx, "block-influence", values, values, meta)
