"""What every scorer receives: the loaded model, its units, the data and the run directory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ila.config import ScoreConfig
from ila.core.layers import LayerMap

__all__ = ["ScoringContext"]


@dataclass
class ScoringContext:
    """Inputs shared by all scorers.

    ``train_features`` are tokenized examples (input_ids, attention_mask, labels) and
    ``collator`` pads a list of them into a batch. ``output_dir`` is the run directory;
    a scorer writes its own intermediate artifacts under ``output_dir / <stage>``.
    """

    model: Any
    tokenizer: Any
    layer_map: LayerMap
    model_id: str
    train_features: Sequence[dict[str, list[int]]]
    collator: Callable[[list[dict[str, list[int]]]], dict[str, Any]]
    config: ScoreConfig
    output_dir: Path
    data_fingerprint: str
    resume: bool = False
    """Continue an interrupted run in ``output_dir`` (stages that keep checkpoints use them)."""
    preference: Any = None
    """``ila.train.trainer.PreferenceTraining`` under ``--objective dpo``: then
    ``train_features`` are preference rows (prompt, chosen, rejected) for TRL's DPOTrainer
    and ``collator`` is unused."""
