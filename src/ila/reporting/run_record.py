"""Everything `ila report` reads from a finished run directory, loaded and checked.

Only the run's JSON/YAML files are read (never a model). Optional parts (selection,
fine-tunes, evaluation) are loaded only when ``run_state.json`` lists their stage as
completed, so a report never shows the half-written output of an interrupted stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ila.core.scores import LayerScores
from ila.errors import IlaError
from ila.files import read_json, require_schema_version
from ila.run_files import (
    EVAL_SCHEMA_VERSION,
    EVAL_VARIANTS_FILE,
    EVAL_VARIANTS_FILE_BEFORE,
)
from ila.rundir import RUN_STATE_FILE, RunDir

__all__ = ["EVAL_SCHEMA_VERSION", "RunRecord", "load_run_record"]


_SCORE_COMMANDS = ("score", "run")


@dataclass
class RunRecord:
    """The contents of one `ila score` / `ila run` directory."""

    run_dir: Path
    command: str
    completed_stages: list[str]
    scores: LayerScores
    config: dict[str, Any]
    environment: dict[str, Any]
    data: dict[str, Any] | None
    stage1: dict[str, Any] | None
    stage2: dict[str, Any] | None
    gate_trajectory: dict[str, Any] | None
    selection: dict[str, Any] | None
    finetunes: dict[str, dict[str, Any]]
    """Fine-tune summaries by name: 'selected' (finetune/), 'all-units' (finetune-all-units/)."""
    evaluation: dict[str, dict[str, Any]] | None
    """eval/variants.json 'variants': variant -> metric -> value."""

    @property
    def method(self) -> str:
        return self.scores.method


def load_run_record(run_dir: Path) -> RunRecord:
    """Read a finished score run; refuse anything else with a one-line :class:`IlaError`."""
    run_dir = Path(run_dir)
    command, stages = _finished_score_state(run_dir)
    run = RunDir(run_dir)
    scores = LayerScores.load(run.scores)
    config = _read_yaml(run.config)
    environment = read_json(run.environment)
    data = read_json(run.data) if run.data.is_file() else None
    stage1 = stage2 = trajectory = None
    if scores.method == "ila":
        # An ensemble (--seeds N) shows the curves of its first member.
        members = (scores.meta.get("ensemble") or {}).get("members") or [""]
        stages_run = RunDir(run_dir / members[0])
        stage1 = read_json(stages_run.stage_summary(1))
        stage2 = read_json(stages_run.stage_summary(2))
        trajectory = read_json(stages_run.gate_trajectory)
    selection = read_json(run.selection) if "select" in stages else None
    finetunes = {}
    for stage, name, tuned in (
        ("finetune", "selected", run.finetune),
        ("finetune-all-units", "all-units", run.finetune_all_units),
    ):
        if stage in stages:
            finetunes[name] = read_json(tuned.finetune_summary)
    evaluation = _read_evaluation(_variants_file(run.evaluation)) if "eval" in stages else None
    return RunRecord(
        run_dir=run_dir,
        command=command,
        completed_stages=stages,
        scores=scores,
        config=config,
        environment=environment,
        data=data,
        stage1=stage1,
        stage2=stage2,
        gate_trajectory=trajectory,
        selection=selection,
        finetunes=finetunes,
        evaluation=evaluation,
    )


def _finished_score_state(run_dir: Path) -> tuple[str, list[str]]:
    """The command and completed stages of the run state in ``run_dir``; :class:`IlaError`
    unless it is a finished 'ila score' or 'ila run' run."""
    if not run_dir.is_dir():
        raise IlaError(f"{run_dir}: no such run directory")
    state_file = run_dir / RUN_STATE_FILE
    if not state_file.is_file():
        raise IlaError(
            f"{run_dir} holds no {RUN_STATE_FILE}; pass the output directory of 'ila score' "
            "or 'ila run'"
        )
    state = read_json(state_file)
    if not isinstance(state, dict) or not isinstance(state.get("completed_stages"), list):
        raise IlaError(f"{state_file}: malformed run state (no 'completed_stages' list)")
    command = state.get("command")
    if command not in _SCORE_COMMANDS:
        raise IlaError(
            f"{run_dir} holds an 'ila {command}' run; 'ila report' reports the runs of "
            "'ila score' and 'ila run'"
        )
    stages = [str(s) for s in state["completed_stages"]]
    if "score" not in stages:
        raise IlaError(
            f"{run_dir} is not a finished run (its scoring stage has not completed); wait for "
            "it to finish or re-run it"
        )
    return command, stages


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise IlaError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise IlaError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise IlaError(f"{path}: expected a mapping of settings")
    return data


def _read_evaluation(path: Path) -> dict[str, dict[str, Any]]:
    """eval/variants.json: {"schema_version": 1, "variants": {name: {metric: value}}}."""
    data = read_json(path)
    require_schema_version(data, EVAL_SCHEMA_VERSION, origin=str(path), command="ila run")
    variants = data.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise IlaError(f"{path}: 'variants' must map variant names to metrics")
    for name, metrics in variants.items():
        if not isinstance(metrics, dict):
            raise IlaError(f"{path}: variant {name!r} must map metric names to values")
        for metric, value in metrics.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise IlaError(f"{path}: {name}.{metric} is {value}")
    return variants


def _variants_file(eval_dir: Path) -> Path:
    """``variants.json``, or ``comparison.json`` in runs made before it was renamed."""
    current = eval_dir / EVAL_VARIANTS_FILE
    before = eval_dir / EVAL_VARIANTS_FILE_BEFORE
    return before if not current.is_file() and before.is_file() else current
