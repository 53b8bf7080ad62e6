"""The names of the files ila writes, and the schema versions of its JSON records.

One place for them, so that writers and readers cannot drift apart. A run directory
(docs/rundirs.md) holds, by command:

- every job: ``config.yaml`` (every resolved setting), ``environment.json`` (versions,
  hardware, the training precision), ``run_state.json`` (completed stages, the model's
  fingerprint), ``ila.log``, ``metrics.jsonl`` (one row per training step), and while it
  runs ``.ila.lock``;
- ``ila score`` / ``ila run``: ``data.json``, ``layer_scores.json``, ``stage1/`` and
  ``stage2/`` (each with ``summary.json``; stage 2 also ``gate_trajectory.json``),
  ``selection.json``;
- ``ila finetune``: ``selection.json``, ``finetune_summary.json``, ``adapter/`` or
  ``changed_weights/`` (each with ``ila_base_model.json``);
- ``ila eval``: ``eval_results.json``, ``generations.jsonl``; ``ila run``'s ``eval/``
  also ``variants.json`` (the variants side by side);
- ``ila compare``: ``comparison.json`` (and its markdown and figures).
"""

from __future__ import annotations

CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
RUN_STATE_FILE = "run_state.json"
LOCK_FILE = ".ila.lock"
LOG_FILE = "ila.log"
METRICS_FILE = "metrics.jsonl"
DATA_FILE = "data.json"
SCORES_FILE = "layer_scores.json"
STAGE_SUMMARY_FILE = "summary.json"
GATE_TRAJECTORY_FILE = "gate_trajectory.json"
SELECTION_FILE = "selection.json"
FINETUNE_SUMMARY_FILE = "finetune_summary.json"
BASE_MODEL_FILE = "ila_base_model.json"
CHANGED_WEIGHTS_FILE = "changed_weights.safetensors"  # a full fine-tune's tuned tensors
CHECKPOINT_STATE_FILE = "ila_state.json"
EVAL_FILE = "eval_results.json"
GENERATIONS_FILE = "generations.jsonl"
EVAL_VARIANTS_FILE = "variants.json"
EVAL_VARIANTS_FILE_BEFORE = "comparison.json"  # the name runs made before 2026-12 used
COMPARISON_FILE = "comparison.json"

SCORES_SCHEMA_VERSION = 1
SELECTION_SCHEMA_VERSION = 1
EVAL_SCHEMA_VERSION = 1
COMPARISON_SCHEMA_VERSION = 1
