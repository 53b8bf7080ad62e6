"""Run the product's jobs end to end; owns the run directory.

``score``: load model and data, find the units, run a scorer (ILA by default), write
``layer_scores.json`` and its report. ``run``: the main job behind ``make demo``; it
chains the stages that exist (score now; select -> fine-tune -> evaluate as they land).

Layout of a run directory (every file written atomically)::

    run_state.json      which stages completed (a run is complete only when listed)
    config.yaml         the fully resolved configuration
    environment.json    library versions, git sha, devices
    data.json           data source, fingerprint, split sizes, dropped/truncated counts
    metrics.jsonl       one row per training step of every stage
    stage1/             ILA stage 1: adapter/, summary.json
    stage2/             ILA stage 2: summary.json, gate_trajectory.json
    layer_scores.json   the ranking (schema_version 1)
    report/             ranking.md, heatmap.png, blocks.png
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ila.config import ScoreConfig, config_to_dict
from ila.rundir import (
    atomic_write_json,
    check_output_dir,
    mark_stage,
    prepare_output_dir,
    write_environment,
    write_yaml,
)
from ila.scores import SCORES_FILE, LayerScores

__all__ = ["ScoreRun", "run", "score"]

log = logging.getLogger(__name__)


@dataclass
class ScoreRun:
    """What a scoring run produced."""

    output_dir: Path
    scores: LayerScores
    seconds: dict[str, float]
    report_files: list[Path]

    def summary(self) -> dict[str, Any]:
        """Facts worth printing: T, top units, time per stage, where the report is."""
        meta = self.scores.meta
        return {
            "method": self.scores.method,
            "model": self.scores.model_id,
            "units": len(self.scores.units),
            "unit_kind": self.scores.unit_kind,
            "T": meta.get("T"),
            "stage1_stable": meta.get("stage1_stable"),
            "top_units": self.scores.top(0.1)[:10],
            "seconds": self.seconds,
            "scores_file": str(self.output_dir / SCORES_FILE),
            "report_dir": str(self.output_dir / "report"),
        }


def score(
    config: ScoreConfig,
    output_dir: Path,
    *,
    method: str = "ila",
    overwrite: bool = False,
    command: str = "score",
) -> ScoreRun:
    """Score every unit of ``config.model.model`` on ``config.data.data`` with ``method``."""
    from ila.scorers import get_scorer

    scorer = get_scorer(method)  # fail on a misspelled method before loading anything
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite=overwrite)
    seconds: dict[str, float] = {}

    # Read and check every input before anything is written to the run directory.
    start = time.perf_counter()
    from ila.data import (
        PaddingCollator,
        data_fingerprint,
        load_examples,
        split_examples,
        tokenize_examples,
    )
    from ila.layers import find_layers
    from ila.models import load_model

    examples = load_examples(
        config.data.data, format=config.data.data_format, limit=config.data.limit
    )
    train, held_out = split_examples(
        examples, eval_fraction=config.data.eval_fraction, seed=config.train.seed
    )
    seconds["load_data"] = time.perf_counter() - start
    start = time.perf_counter()
    model, tokenizer = load_model(
        config.model.model,
        dtype=config.model.dtype,
        device=config.model.device,
        threads=config.model.threads,
    )
    layer_map = find_layers(
        model,
        blocks_path=config.model.blocks_path,
        module_types=config.lora.module_types or None,
    )
    seconds["load_model"] = time.perf_counter() - start
    tokenized = tokenize_examples(
        train, tokenizer, max_length=config.data.max_length, template=config.data.template
    )
    fingerprint = data_fingerprint(train)

    output_dir = prepare_output_dir(output_dir, command=command, overwrite=overwrite)
    resolved = config_to_dict(config)
    resolved["method"] = method
    write_yaml(output_dir / "config.yaml", resolved)
    write_environment(output_dir)
    atomic_write_json(
        output_dir / "data.json",
        {
            "source": config.data.data,
            "format": config.data.data_format,
            "fingerprint": fingerprint,
            "num_examples": len(examples),
            "num_train": len(train),
            "num_eval": len(held_out),
            "num_train_features": len(tokenized.features),
            "num_dropped": tokenized.num_dropped,
            "num_truncated": tokenized.num_truncated,
            "num_response_tokens": tokenized.num_response_tokens,
        },
    )

    from ila.scorers import ScoringContext

    ctx = ScoringContext(
        model=model,
        tokenizer=tokenizer,
        layer_map=layer_map,
        model_id=config.model.model,
        train_features=tokenized.features,
        collator=PaddingCollator(tokenizer.pad_token_id),
        config=config,
        output_dir=output_dir,
        data_fingerprint=fingerprint,
    )
    start = time.perf_counter()
    scores = scorer(ctx)
    seconds["score"] = time.perf_counter() - start
    for key in ("stage1_seconds", "stage2_seconds"):
        if key in scores.meta:
            seconds[key.removesuffix("_seconds")] = scores.meta[key]
    if not isinstance(scores, LayerScores):
        raise TypeError(f"scorer {method!r} returned {type(scores).__name__}, not LayerScores")
    scores.save(output_dir / SCORES_FILE)

    from ila.report import write_score_report

    report_files = write_score_report(scores, output_dir / "report")
    mark_stage(output_dir, "score")
    return ScoreRun(output_dir, scores, seconds, report_files)


def run(config: ScoreConfig, output_dir: Path, *, overwrite: bool = False) -> ScoreRun:
    """The main job: identify the important units (ILA), then the stages that follow.

    Selection, selective fine-tuning and evaluation join this chain as they are built.
    """
    return score(config, output_dir, method="ila", overwrite=overwrite, command="run")
