"""The score job: load model and data, find the units, run a scorer (ILA by default),
write ``layer_scores.json`` and its report (``--seeds N``: N members and their consensus).
What it writes where is :class:`ila.rundir.RunDir`'s (docs/rundirs.md).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ila.config import ScoreConfig, input_paths, recorded_config, setting
from ila.core.ensemble import stability_lines
from ila.core.scores import LayerScores
from ila.errors import IlaError, argument
from ila.files import atomic_write_json, read_json
from ila.jobs.inputs import ModelLoad, SharedInputs
from ila.model.identity import ModelFingerprint, model_fingerprint
from ila.rundir import RunDir, refuse_resume_with_overwrite
from ila.train.parallel import is_main_process, require_supported_launch

__all__ = ["ScoreInputs", "ScoreRun", "ScoreSummary", "load_score_inputs", "score"]

if TYPE_CHECKING:
    from ila.scorers.base import ScoringContext
    from ila.scorers.existing import ExistingUpdate
    from ila.train.precision import PrecisionChoice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreSummary:
    """What `ila score` prints about a ranking: where it came from (T and whether stage 1
    was stable, or the existing update), its top units (none for a tie, then ``tie`` says
    why), what the run can say of its stability, the time per stage, where the files are."""

    method: str
    model: str
    units: int
    unit_kind: str
    T: int | None
    stage1_stable: bool | None
    source: dict[str, Any] | None
    top_units: list[str]
    tie: str | None
    stability: list[str]
    seconds: dict[str, float]
    scores_file: str
    report_dir: str

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain data."""
        return dataclasses.asdict(self)


@dataclass
class ScoreRun:
    """What a scoring run produced."""

    output_dir: Path
    scores: LayerScores
    seconds: dict[str, float]
    report_files: list[Path]

    @property
    def summary(self) -> ScoreSummary:
        """The facts worth printing (:class:`ScoreSummary`)."""
        meta = self.scores.meta
        found = self.scores.separation()
        rundir = RunDir(self.output_dir)
        return ScoreSummary(
            method=self.scores.method,
            model=self.scores.model_id,
            units=len(self.scores.units),
            unit_kind=self.scores.unit_kind,
            T=meta.get("T"),
            stage1_stable=meta.get("stage1_stable"),
            source=meta.get("source"),
            # A tie has no top units: its order is the model's (ila.core.ties).
            top_units=[] if found.tie else self.scores.top(0.1)[:10],
            tie=found.reason if found.tie else None,
            stability=stability_lines(self.scores),
            seconds=self.seconds,
            scores_file=str(rundir.scores),
            report_dir=str(rundir.report),
        )


@dataclass
class ScoreInputs:
    """Everything a scoring run reads, loaded and checked before anything is written."""

    model: Any
    tokenizer: Any
    layer_map: Any
    num_examples: int
    num_eval: int
    train_features: Any
    data_stats: dict[str, Any]
    fingerprint: str
    model_fingerprint: ModelFingerprint
    preference: Any = None
    """``PreferenceTraining`` under ``--objective dpo`` (then the features are pair rows)."""


def _preference_inputs(
    config: ScoreConfig,
    model: Any,
    tokenizer: Any,
    layer_map: Any,
    identity: ModelFingerprint,
    pairs: list[Any],
    train: list[Any],
    held_out: list[Any],
) -> ScoreInputs:
    """ScoreInputs of ``--objective dpo``: the training pairs as TRL's rows."""
    from ila.data.preference import preference_fingerprint, preference_rows
    from ila.train.trainer import PreferenceTraining

    rows = preference_rows(
        train, tokenizer, template=config.data.template, max_length=config.data.max_length
    )
    fingerprint = preference_fingerprint(train)
    stats = {
        "source": config.data.data,
        "format": "preference",
        "fingerprint": fingerprint,
        "num_examples": len(pairs),
        "num_train": len(train),
        "num_eval": len(held_out),
        "num_train_features": len(rows),
        "warnings": [],
    }
    preference = PreferenceTraining(tokenizer, config.train.dpo_beta, config.data.max_length)
    return ScoreInputs(
        model,
        tokenizer,
        layer_map,
        len(pairs),
        len(held_out),
        rows,
        stats,
        fingerprint,
        identity,
        preference,
    )


def load_score_inputs(
    config: ScoreConfig, shared: SharedInputs | None = None
) -> tuple[ScoreInputs, dict[str, float]]:
    """Load data, model and units for ``config``; returns them and the seconds spent.
    ``shared``: what an enclosing `ila run` has loaded already (ila.jobs.inputs)."""
    from ila.core.layers import find_layers
    from ila.data import data_fingerprint

    shared = shared or SharedInputs(config.data, config.train.objective)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    data = config.data
    examples, train, held_out = shared.split()
    seconds["load_data"] = time.perf_counter() - start
    start = time.perf_counter()
    model, tokenizer = shared.model(ModelLoad.of(config.model), max_length=data.max_length)
    layer_map = find_layers(
        model, blocks_path=config.model.blocks_path, module_types=config.lora.module_types or None
    )
    identity = model_fingerprint(config.model.model)
    seconds["load_model"] = time.perf_counter() - start
    if config.train.objective == "dpo":
        return _preference_inputs(
            config, model, tokenizer, layer_map, identity, examples, train, held_out
        ), seconds
    tokenized = shared.tokenized("train", tokenizer)
    fingerprint = data_fingerprint(train)
    stats = {
        "source": data.data,
        "format": data.data_format,
        "fingerprint": fingerprint,
        "num_examples": len(examples),
        "num_train": len(train),
        "num_eval": len(held_out),
        "num_train_features": len(tokenized.features),
        "num_dropped": tokenized.num_dropped,
        "num_truncated": tokenized.num_truncated,
        "num_empty_responses": tokenized.num_empty_responses,
        "num_response_tokens": tokenized.num_response_tokens,
        "warnings": tokenized.warnings,
    }
    inputs = ScoreInputs(
        model,
        tokenizer,
        layer_map,
        len(examples),
        len(held_out),
        tokenized.features,
        stats,
        fingerprint,
        identity,
    )
    return inputs, seconds


def _scoring_context(
    config: ScoreConfig, inputs: ScoreInputs, output_dir: Path, resume: bool
) -> ScoringContext:
    """What a scorer receives: the loaded model and data, the settings, the run directory."""
    from ila.data import PaddingCollator
    from ila.scorers import ScoringContext

    return ScoringContext(
        model=inputs.model,
        tokenizer=inputs.tokenizer,
        layer_map=inputs.layer_map,
        model_id=config.model.model,
        train_features=inputs.train_features,
        collator=PaddingCollator(inputs.tokenizer.pad_token_id),
        config=config,
        output_dir=output_dir,
        data_fingerprint=inputs.fingerprint,
        resume=resume,
        preference=inputs.preference,
    )


def _save_scores(scores: LayerScores, rundir: RunDir) -> list[Path]:
    """Write layer_scores.json and its report; mark the run scored. The report's files."""
    from ila.reporting import write_score_report

    scores.save(rundir.scores)
    report_files = write_score_report(scores, rundir.report)
    rundir.mark("score")
    log.info("wrote %s and its report in %s", rundir.scores, rundir.report)
    return report_files


def _check_combination(config: ScoreConfig, method: str) -> None:
    """Refuse settings that cannot go together, before anything is loaded."""
    stage1 = config.stage1.method
    if config.model.quantization == "nf4" and stage1 == "full":
        raise IlaError(
            setting("model", "quantization"),
            " nf4 with ",
            setting("stage1", "method"),
            " full: 4-bit weights cannot be fine-tuned; use ",
            setting("stage1", "method"),
            " lora (LoRA on the 4-bit base) or ",
            setting("model", "quantization"),
            " none",
        )
    if config.train.objective == "dpo" and stage1 == "full":
        raise IlaError(
            setting("train", "objective"),
            " dpo with ",
            setting("stage1", "method"),
            " full: DPO's reference is the model "
            "without the stage-1 update, which a full fine-tune cannot switch off; use ",
            setting("stage1", "method"),
            " lora",
        )
    if config.train.objective == "dpo" and method in ("grad-norm", "block-influence"):
        raise IlaError(
            setting("train", "objective"),
            f" dpo: the {method} scorer reads supervised examples, not preference pairs; use ",
            argument("scorer"),
            " ila (or lora-norm, snr, first, last, random)",
        )
    if config.source.given:
        _check_existing_update(config, method)
    if method == "lora-norm" and stage1 != "lora":
        raise IlaError(
            setting("stage1", "method"),
            " full: the lora-norm scorer ranks LoRA update norms; use it with ",
            setting("stage1", "method"),
            " lora, or ",
            argument("scorer"),
            " ila to gate the full fine-tuning deltas",
        )


def _check_existing_update(config: ScoreConfig, method: str) -> None:
    """Refuse what cannot rank an existing update (``source.from_adapter`` or
    ``source.from_model``; docs/method.md, "ILA on an update you already have"): another
    scorer than ila, several ensemble seeds, and DPO on weight changes."""
    source = config.source
    flag = setting("source", "from_adapter" if source.from_adapter else "from_model")
    if method != "ila":
        raise IlaError(
            flag,
            " ranks an existing update with ILA's stage 2; drop ",
            argument("scorer"),
            f" {method} (or pass ",
            argument("scorer"),
            " ila)",
        )
    if config.ensemble.seeds > 1:
        raise IlaError(
            flag,
            " with ",
            setting("ensemble", "seeds"),
            f" {config.ensemble.seeds}: an existing update is one "
            "stage 1, so independent identifications cannot be made from it; drop ",
            setting("ensemble", "seeds"),
        )
    if source.from_model and config.train.objective == "dpo":
        raise IlaError(
            setting("source", "from_model"),
            " with ",
            setting("train", "objective"),
            " dpo: DPO's reference is the model without the "
            "update, which weight changes cannot switch off; use ",
            setting("source", "from_adapter"),
            " or sft",
        )


def score(
    config: ScoreConfig,
    output_dir: Path,
    *,
    method: str = "ila",
    overwrite: bool = False,
    resume: bool = False,
    command: str = "score",
    shared: SharedInputs | None = None,
) -> ScoreRun:
    """Score every unit of ``config.model.model`` on ``config.data.data`` with ``method``.

    Every input is read and checked before the run directory is touched, so bad input
    leaves nothing behind. ``resume`` continues the interrupted run in ``output_dir``
    (same settings and data required): ILA reuses a completed stage 1 and continues a
    stage from its last complete ``--save-steps`` checkpoint; other scorers start again.
    ``shared``: the data and model an enclosing job has loaded (ila.jobs.inputs).
    """
    from ila.scorers import get_scorer

    refuse_resume_with_overwrite(resume, overwrite)
    scorer = get_scorer(method)  # fail on a misspelled method before loading anything
    _check_combination(config, method)
    rundir = RunDir(output_dir)
    resolved = {**recorded_config(config), "method": method}
    finished_stage = "score" if command == "score" else None  # `ila run` checks its own end
    checks = {"overwrite": overwrite, "resume": resume, "inputs": input_paths(config)}
    if config.ensemble.seeds > 1:
        rundir.check(resolved, finished_stage=finished_stage, **checks)
        finished = _finished_score(rundir, {}) if resume else None
        if finished is not None:
            return finished
        with rundir.open(command, resolved, **checks):
            return _score_ensemble(config, rundir, method=method, resume=resume, shared=shared)
    precision = _check_launch(config, method)
    rundir.check(resolved, finished_stage=finished_stage, **checks)
    shared = shared or SharedInputs(config.data, config.train.objective)
    inputs, seconds, update = _load_checked_inputs(config, shared)
    if resume:
        _require_same_data(rundir, inputs.data_stats)
        rundir.require_same_model(inputs.model_fingerprint)
        finished = _finished_score(rundir, seconds)
        if finished is not None:
            return finished
    environment = {"precision": precision.to_dict()}
    with rundir.open(command, resolved, environment=environment, **checks) as main:
        if main and not resume:
            atomic_write_json(rundir.data, inputs.data_stats)
            rundir.record_model(inputs.model_fingerprint)
        ctx = _scoring_context(config, inputs, rundir.path, resume)
        scores = _ranked(ctx, scorer, method, update, seconds)
        if config.model.quantization == "nf4":
            shared.spoil_model("QLoRA prepared the 4-bit base for training")
        _record_run_facts(scores, config, inputs.model_fingerprint, seconds)
        report_files = _save_scores(scores, rundir) if main else []
    return ScoreRun(rundir.path, scores, seconds, report_files)


def _check_launch(config: ScoreConfig, method: str) -> PrecisionChoice:
    """Refuse a launch that cannot score this way; the training precision (fp16 on a
    CPU fails here)."""
    from ila.train.trainer import train_precision

    require_supported_launch(
        config.model.device,
        project_budget=method == "ila" and config.stage2.budget == "project",
        scorer=method,
        stage1_method=config.stage1.method,
        quantization=config.model.quantization,
    )
    return train_precision(config.train, config.model.device)


def _load_checked_inputs(
    config: ScoreConfig, shared: SharedInputs
) -> tuple[ScoreInputs, dict[str, float], ExistingUpdate | None]:
    """The score job's inputs, and the existing update it ranks (``--from-adapter`` /
    ``--from-model``), read and checked before the run directory is written."""
    inputs, seconds = load_score_inputs(config, shared)
    if not config.source.given:
        return inputs, seconds, None
    from ila.scorers.existing import load_existing_update

    update = load_existing_update(config.source, config.model.model, inputs.model, inputs.layer_map)
    inputs.layer_map = update.layer_map
    seconds["load_update"] = update.seconds
    return inputs, seconds, update


def _ranked(
    ctx: ScoringContext,
    scorer: Any,
    method: str,
    update: ExistingUpdate | None,
    seconds: dict[str, float],
) -> LayerScores:
    """Run the scorer (or stage 2 on the existing ``update``); its time into ``seconds``."""
    log.info(
        "scoring %d units of %s with %s on %d training examples",
        len(ctx.layer_map.units),
        ctx.model_id,
        method,
        len(ctx.train_features),
    )
    start = time.perf_counter()
    if update is not None:
        from ila.scorers.existing import rank_existing_update

        scores = rank_existing_update(ctx, update)
    else:
        scores = scorer(ctx)
    seconds["score"] = time.perf_counter() - start
    if not isinstance(scores, LayerScores):
        raise TypeError(f"scorer {method!r} returned {type(scores).__name__}, not LayerScores")
    return scores


def _record_run_facts(
    scores: LayerScores, config: ScoreConfig, fingerprint: ModelFingerprint, seconds: dict
) -> None:
    """Put the model, base precision and objective in the scores' meta; collect the
    stages' seconds."""
    scores.meta["model_fingerprint"] = fingerprint.to_dict()
    scores.meta["base"] = {"dtype": config.model.dtype, "quantization": config.model.quantization}
    scores.meta["objective"] = config.train.objective
    for key in ("stage1_seconds", "stage2_seconds"):
        if key in scores.meta:
            seconds[key.removesuffix("_seconds")] = scores.meta[key]


def _finished_score(rundir: RunDir, seconds: dict[str, float]) -> ScoreRun | None:
    """The run in ``rundir`` if its scoring stage completed (a resumed `ila run`)."""
    if not rundir.completed("score"):
        return None
    scores = LayerScores.load(rundir.scores)
    return ScoreRun(rundir.path, scores, seconds, sorted(rundir.report.iterdir()))


def _score_ensemble(
    config: ScoreConfig, rundir: RunDir, *, method: str, resume: bool, shared: SharedInputs | None
) -> ScoreRun:
    """``--seeds N``: N independent runs under ``seeds/seed-<s>`` of the open ``rundir``,
    then their consensus (ila.core.ensemble) as the run's ``layer_scores.json``.

    Each member is an ordinary score run with seed ``config.train.seed + k`` (the split
    stays the same: ``--split-seed``). ``resume`` reuses finished members and resumes an
    interrupted one. The members share one load of the data and the model (``shared``).
    """
    from ila.core.ensemble import consensus_scores
    from ila.reporting import write_score_report

    seeds = range(config.train.seed, config.train.seed + config.ensemble.seeds)  # lazily
    shared = shared or SharedInputs(config.data, config.train.objective)
    runs, members, seconds = [], [], {}
    for seed in seeds:
        member_dir = rundir.seed(seed)
        member = dataclasses.replace(
            config,
            train=dataclasses.replace(config.train, seed=seed),
            ensemble=dataclasses.replace(config.ensemble, seeds=1),
        )
        again = resume and member_dir.state_file.is_file()
        log.info("ensemble member %d of %d (seed %d)", len(runs) + 1, len(seeds), seed)
        done = score(
            member,
            member_dir.path,
            method=method,
            overwrite=not again,
            resume=again,
            command="score-member",
            shared=shared,
        )
        runs.append(done.scores)
        members.append(str(member_dir.path.relative_to(rundir.path)))
        for key, value in done.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
    scores = consensus_scores(runs, seeds=seeds, members=members)
    report_files: list[Path] = []
    if is_main_process():
        atomic_write_json(rundir.data, read_json(rundir.seed(seeds[0]).data))
        scores.save(rundir.scores)
        report_files = write_score_report(scores, rundir.report)
        rundir.mark("score")
    return ScoreRun(rundir.path, scores, seconds, report_files)


def _require_same_data(rundir: RunDir, stats: dict[str, Any]) -> None:
    """A resumed run must train on the data it started with (same fingerprint)."""
    recorded = read_json(rundir.data)
    if recorded.get("fingerprint") != stats["fingerprint"]:
        raise IlaError(
            argument("resume"),
            f": the training data differ from the data recorded in "
            f"{rundir.data} (fingerprint {recorded.get('fingerprint')} there, "
            f"{stats['fingerprint']} now); resume with the same ",
            setting("data", "data"),
            ", or start a new run",
        )
