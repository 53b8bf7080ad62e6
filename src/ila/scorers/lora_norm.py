"""The ``lora-norm`` scorer: the size of each unit's stage-1 LoRA update.

It runs ILA's stage 1 unchanged (:func:`ila.scorers.ila.run_stage1`: LoRA on every unit,
trained on the response-token loss until epsilon-stable or ``stage1.max_steps``) and
scores unit i by ||Delta_i||_F = (alpha / r) ||B_i A_i||_F
(:func:`ila.core.lora.lora_update_norms`).
Importance is the norm divided by the largest norm; raw is the norm. This is the
natural ablation of ILA's stage 2: the same adapter, ranked by how far training moved
each unit instead of by a learned gate (docs/method.md, "Notation"; the paper, arXiv
2410.17875, motivates its gates against this magnitude view).

Cost: ILA's stage 1 (T LoRA training steps), no stage 2. Artifacts as ILA's stage 1:
``stage1/adapter``, ``stage1/summary.json`` and ``metrics.jsonl`` rows.
"""

from __future__ import annotations

from ila.core.lora import add_lora, lora_update_norms
from ila.core.scores import LayerScores
from ila.scorers.base import ScoringContext
from ila.scorers.common import module_scores, normalise_by_max, preserved_model_state
from ila.scorers.ila import run_stage1

__all__ = ["score_lora_norm"]


def score_lora_norm(ctx: ScoringContext) -> LayerScores:
    """Train stage-1 LoRA on every unit and rank units by ||Delta_i||_F."""
    base = ctx.model
    with preserved_model_state(base):
        model = add_lora(base, ctx.layer_map.units, ctx.config.lora, seed=ctx.config.train.seed)
        try:
            stage1 = run_stage1(ctx, model)
            norms = lora_update_norms(model, ctx.layer_map).tolist()
        finally:
            # Remove the LoRA layers peft injected; the flags peft froze are restored by
            # preserved_model_state.
            ctx.model = model.unload()
    meta = {
        "granularity": "module",
        "T": stage1["T"],
        "stage1_stable": stage1["stable"],
        "stage1_steps": stage1["steps"],
        "stage1_seconds": stage1["seconds"],
        "seed": ctx.config.train.seed,
        "data_fingerprint": ctx.data_fingerprint,
        "num_train_examples": len(ctx.train_features),
        "lora": {"rank": ctx.config.lora.rank, "alpha": ctx.config.lora.alpha},
    }
    return module_scores(ctx, "lora-norm", normalise_by_max(norms), norms, meta)
