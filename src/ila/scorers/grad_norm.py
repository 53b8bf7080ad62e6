"""The ``grad-norm`` scorer: how strongly the alignment loss pulls on each unit's weight.

With every weight frozen except the units' weights W_i, it runs forward and backward
passes of the response-token next-token loss (the loss ILA trains on) on up to
:data:`ila.scorers.common.PROBE_BATCHES` batches of ``train.batch_size`` examples, drawn
in an order seeded by ``train.seed``, in eval mode (no dropout). For each batch b it
takes g_i,b = ||dL_b / dW_i||_F and scores unit i by the mean of g_i,b over batches (a
mean of per-batch magnitudes, so gradients that point different ways in different
batches do not cancel). Importance is that mean divided by the largest one; raw is the
mean itself. A unit whose weight cannot change the loss gets exactly 0.

This is the first-order "which weights does the task pull on" heuristic behind
gradient-based choices of what to fine-tune; it needs no training and no adapter, and
it sees the model only at its starting point (unlike ILA and ``lora-norm``, which train).

Cost: at most PROBE_BATCHES forward+backward passes of the frozen model; gradients are
taken with ``torch.autograd.grad``, so no ``.grad`` is left on the model. The
``requires_grad`` flags and the train/eval mode are restored afterwards.
"""

from __future__ import annotations

import torch

from ila.config import setting
from ila.core.scores import LayerScores
from ila.errors import IlaError
from ila.scorers.base import ScoringContext
from ila.scorers.common import (
    PROBE_BATCHES,
    model_device,
    module_scores,
    normalise_by_max,
    preserved_model_state,
    probe_batches,
    to_device,
)

__all__ = ["score_grad_norm"]


def score_grad_norm(ctx: ScoringContext) -> LayerScores:
    """Rank units by the mean Frobenius norm of the loss gradient of their weight."""
    model = ctx.model
    batches = probe_batches(ctx, PROBE_BATCHES)
    weights = [model.get_submodule(u.module_path).weight for u in ctx.layer_map.units]
    totals = torch.zeros(len(weights), dtype=torch.float64)
    device = model_device(model)
    with preserved_model_state(model):
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        for weight in weights:
            weight.requires_grad_(True)
        for index, batch in enumerate(batches):
            loss = model(**to_device(batch, device), use_cache=False).loss
            if not torch.isfinite(loss):
                raise IlaError(
                    f"grad-norm: the loss of probe batch {index} is {float(loss)}; use ",
                    setting("model", "dtype"),
                    " float32 instead of float16",
                )
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            for i, grad in enumerate(grads):
                if grad is not None:
                    totals[i] += float(grad.float().norm())
    means = (totals / len(batches)).tolist()
    meta = {
        "granularity": "module",
        "num_batches": len(batches),
        "batch_size": ctx.config.train.batch_size,
        "seed": ctx.config.train.seed,
        "data_fingerprint": ctx.data_fingerprint,
        "aggregate": "mean over batches of ||dL/dW||_F",
    }
    return module_scores(ctx, "grad-norm", normalise_by_max(means), means, meta)
