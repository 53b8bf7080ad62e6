"""The run job behind ``make demo``, as its steps over inputs loaded once
(ila.jobs.inputs): score -> select -> fine-tune the selection -> fine-tune all units ->
evaluate base, all units and the selection. What it writes where is
:class:`ila.rundir.RunDir`'s (docs/rundirs.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ila.config import RunConfig, recorded_config
from ila.core.selection import Selection, SelectionRule
from ila.errors import argument
from ila.jobs.inputs import SharedInputs
from ila.jobs.score import ScoreRun, score
from ila.rundir import RunDir
from ila.train.parallel import is_main_process, require_supported_launch

__all__ = ["RunResult", "run"]

if TYPE_CHECKING:
    from ila.jobs.finetune import FinetuneRun

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What `ila run` produced: the ranking, the selection, the fine-tunes it trained
    (None where a setting turned one off) and the evaluation of each variant."""

    score: ScoreRun
    selection: Selection
    finetune: FinetuneRun | None = None
    all_units: FinetuneRun | None = None
    evaluation: dict[str, dict[str, Any]] | None = None
    model_loads: int = 0
    """How many times the run read the base weights from disk (ila.jobs.inputs)."""


def _warm_start(config: RunConfig) -> bool:
    """Whether `ila run`'s fine-tunes start from the stage-1 adapter: as asked, or by
    default wherever they can (a LoRA fine-tune on a LoRA stage 1 of one seed), since the
    stage-1 steps then count toward the fine-tune (docs/results.md, bench_warm_start)."""
    asked = config.finetune.init_from_stage1
    if asked is not None:
        return asked
    reasons = []
    if config.finetune.method not in ("lora", "qlora"):
        reasons.append(f"--method {config.finetune.method} has no LoRA to start")
    if config.stage1.method != "lora":
        reasons.append(f"--stage1-method {config.stage1.method} trains no LoRA adapter")
    if config.ensemble.seeds > 1:
        reasons.append(f"--seeds {config.ensemble.seeds} trains one adapter per member")
    if config.source.given:
        reasons.append("an existing update is ranked, ila trains no stage-1 adapter")
    if reasons:
        log.info("the fine-tunes start from LoRA's init: %s", "; ".join(reasons))
        return False
    log.info("the fine-tunes start from the stage-1 adapter (--no-init-from-stage1: from init)")
    return True


def run(
    config: RunConfig,
    output_dir: Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    allow_tied_ranking: bool = False,
) -> RunResult:
    """The main job: identify the important units (ILA), select some, fine-tune only those.

    Writes the score run into ``output_dir``, ``selection.json`` beside its
    ``layer_scores.json``, and the fine-tune (``config.finetune``, the settings of `ila
    finetune`) into ``output_dir/finetune`` (skipped with ``run.finetune`` off). With
    ``run.evaluate`` it then fine-tunes all units as a baseline (``run.compare_all_units``)
    and evaluates base, all units and the selection side by side into ``output_dir/eval``
    (see ila.jobs.evaluate).

    ``resume`` continues an interrupted run: scoring as :func:`score` resumes it, the
    selection is made again, the fine-tune continues from its last complete checkpoint
    (or starts again when it has none). The run directory stays locked from the moment it
    is opened (at once for ``resume``) until the job ends. A ranking that is a tie
    (ila.core.ties) stops the run after scoring, its scores kept, unless
    ``allow_tied_ranking``.
    """
    rundir = RunDir(output_dir)
    with rundir.lock_scope():
        if resume:
            last = "finetune" if config.run.finetune else "select"
            last = "eval" if config.run.evaluate and last == "finetune" else last
            resolved = {**recorded_config(config), "method": "ila"}
            rundir.check(resolved, resume=True, finished_stage=last)
            rundir.lock("run")  # held through scoring, or a finished scoring's reuse
        return _run_steps(
            config,
            rundir,
            overwrite=overwrite,
            resume=resume,
            allow_tied_ranking=allow_tied_ranking,
        )


def _run_steps(
    config: RunConfig, rundir: RunDir, *, overwrite: bool, resume: bool, allow_tied_ranking: bool
) -> RunResult:
    """`ila run`'s steps over inputs loaded once (ila.jobs.inputs): score, select (not
    from a tie, unless allowed), fine-tune the selection, fine-tune all units, evaluate
    base / all units / selection."""
    from ila.jobs.evaluate import evaluate_run
    from ila.jobs.finetune import finetune_step

    settings = config.run
    evaluate = settings.evaluate and settings.finetune
    _check_run(config, evaluate=evaluate)
    shared = SharedInputs(config.data, config.train.objective)
    scored = score(
        config,
        rundir.path,
        method="ila",
        overwrite=overwrite,
        resume=resume,
        command="run",
        shared=shared,
    )
    rundir.lock("run")
    result = RunResult(scored, _select(config, rundir, scored, allow_tied_ranking))
    if settings.finetune:
        tune = config.finetune_config(init_from_stage1=_warm_start(config))
        steps = {"stage1_run": rundir.path, "shared": shared, "measure_held_out": not evaluate}
        result.finetune = finetune_step(
            tune, result.selection, rundir.finetune.path, resume, **steps
        )
        _mark(rundir, "finetune")
        if evaluate and settings.compare_all_units:
            all_units = SelectionRule("all-units", True)
            path = rundir.finetune_all_units.path
            result.all_units = finetune_step(tune, all_units, path, resume, **steps)
            _mark(rundir, "finetune-all-units")
    if evaluate:
        all_units = result.all_units is not None
        result.evaluation = evaluate_run(config, rundir, all_units=all_units, shared=shared)
    result.model_loads = shared.model_loads
    log.info(
        "ila run read the base weights %d time(s) and tokenized %d split(s)",
        shared.model_loads,
        shared.tokenizations,
    )
    return result


def _check_run(config: RunConfig, *, evaluate: bool) -> None:
    """What `ila run` refuses before anything is loaded (the score job checks the rest)."""
    require_supported_launch(
        config.model.device,
        command="run",
        evaluate=evaluate,
        merge=config.finetune.merge and config.run.finetune,
    )
    if evaluate:
        from ila.jobs.evaluate import check_eval_inputs

        check_eval_inputs(config.eval)


def _select(
    config: RunConfig, rundir: RunDir, scored: ScoreRun, allow_tied_ranking: bool
) -> Selection:
    """The run's selection by its rule, saved as ``selection.json``; a tie is refused
    unless ``allow_tied_ranking`` (ila.core.ties)."""
    from ila.core.layers import LayerMap
    from ila.core.ties import require_separated

    again = (
        "run the same command with ",
        argument("resume"),
        " ",
        argument("allow_tied_ranking"),
        " (the scores are kept)",
    )
    require_separated(scored.scores, origin=str(rundir.scores), allow=allow_tied_ranking, how=again)
    rule = SelectionRule.from_kwargs(**config.run.selection_rule)
    layer_map = LayerMap.from_dict(scored.scores.layout)
    selection = rule.apply(layer_map, scores=scored.scores, scores_file=rundir.scores)
    if is_main_process():
        selection.save(rundir.selection)
        rundir.mark("select")
    return selection


def _mark(rundir: RunDir, stage: str) -> None:
    """Record ``stage`` as completed (by the process that writes)."""
    if is_main_process():
        rundir.mark(stage)
