"""The Python API: every `ila` command as a typed function (``import ila; ila.score(...)``).

Each function takes what its command takes: ``model`` and ``data`` (an embedded name, a
path or a hub id; ``model`` may also be a loaded model with its ``tokenizer``, see
:func:`model_source`, and ``data`` rows in memory, see :func:`data_source`), an
``output_dir`` for jobs that write a run directory, a ``config`` (a YAML path, a nested
mapping such as a run's ``config.yaml``, or a config object) and settings as keyword
arguments named like the command-line flags with underscores (``stage1_max_steps=30`` is
``--stage1-max-steps 30``); their errors (:class:`ila.errors.IlaError`) name the settings
the same way (the command line, which calls these functions with its flags as keywords,
prints the same errors with the flags).
Keywords override ``config``, which overrides the defaults (docs/method.md lists them);
:func:`ila.config.resolve` merges them, once. The command-line interface (ila.cli) calls
these functions and only prints.

Results are the objects the jobs produce: :class:`ila.jobs.score.ScoreRun` (``.scores`` is
a :class:`ila.core.scores.LayerScores` with ``.top(fraction)`` and ``.to_dataframe()``),
:class:`ila.core.selection.Selection`, :class:`ila.jobs.finetune.FinetuneRun`,
:class:`ila.jobs.evaluate.EvalRun`, :class:`ila.jobs.run.RunResult`,
:class:`ila.analysis.compare.Comparison` and :class:`ila.analysis.plan.Plan`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ila.config import (
    EvalConfig,
    FinetuneConfig,
    PlanConfig,
    RunConfig,
    ScoreConfig,
    resolve,
)
from ila.errors import IlaError, argument, short_repr
from ila.progress import progress_interval

if TYPE_CHECKING:
    from ila.analysis.compare import Comparison
    from ila.analysis.plan import Plan
    from ila.core.scores import LayerScores
    from ila.core.selection import Selection, SelectionRule
    from ila.jobs.evaluate import EvalRun
    from ila.jobs.finetune import FinetuneRun
    from ila.jobs.run import RunResult
    from ila.jobs.score import ScoreRun

__all__ = [
    "compare",
    "data_source",
    "evaluate",
    "export",
    "finetune",
    "make_config",
    "model_source",
    "plan",
    "report",
    "run",
    "score",
    "select",
]

ConfigSource = str | Path | Mapping[str, Any] | None
_C = TypeVar("_C")
_F = TypeVar("_F", bound=Callable[..., Any])


def _checks_environment(function: _F) -> _F:
    """``function`` refuses a bad ``ILA_PROGRESS_INTERVAL`` (ila.progress) before any work."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        progress_interval()
        return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@_checks_environment
def make_config(
    config_cls: type[_C],
    config: Any = None,
    *,
    keywords: Sequence[str] = (),
    scorer: str = "ila",
    **settings: Any,
) -> _C:
    """A ``config_cls`` (e.g. :class:`ila.config.ScoreConfig`) from ``config`` and settings
    (:func:`ila.config.resolve`, the resolution the command line uses too).

    ``config`` is a YAML path, a nested mapping, or a config object of any command (its
    sections this command does not use are skipped); ``settings`` are flat keywords named
    like the flags (``max_length=96``, ``stage1_max_steps=30``), which win. ``None`` values
    are ignored, so optional arguments can be passed through. ``keywords`` are the calling
    function's own keywords, suggested too for a misspelled setting. A run's config.yaml
    records its scorer, which must be ``scorer``.
    """
    return resolve(config_cls, config, settings, scorer=scorer, keywords=tuple(keywords))


DataArgument = str | Path | Sequence[Mapping[str, Any]] | Any


@_checks_environment
def data_source(data: DataArgument) -> str | None:
    """``data`` as the ``--data`` value a job records: a name or path as it is; rows in
    memory (a list of dicts, or a ``datasets.Dataset``) are written once to a JSONL file
    named by their content under ``<ila cache>/data/`` (the cache of ila.model.loading), so the
    run's config.yaml names a file that ``--resume`` and the reproduce command can read.
    The rows must be in one of the formats a file may hold (docs/usage.md, "Data").
    """
    if data is None or isinstance(data, (str, Path)):
        return None if data is None else str(data)
    rows = data.to_list() if hasattr(data, "to_list") and callable(data.to_list) else data
    if not isinstance(rows, Sequence) or not rows:
        raise IlaError(
            "data must be a name, a path, or a non-empty list of records (dicts) or a "
            f"datasets.Dataset; got {type(data).__name__}"
        )
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise IlaError(f"data[{i}] is a {type(row).__name__}, not a record (a dict)")
    import hashlib
    import json

    from ila.files import atomic_write_text
    from ila.model.loading import cache_dir

    try:
        lines = "".join(json.dumps(dict(row), ensure_ascii=False) + "\n" for row in rows)
    except (TypeError, ValueError) as exc:
        raise IlaError(f"data holds a value that is not JSON ({exc})") from exc
    digest = hashlib.sha256(lines.encode()).hexdigest()[:16]
    path = cache_dir() / "data" / f"rows-{digest}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, lines)
    return str(path)


ModelArgument = str | Path | Any


@_checks_environment
def model_source(model: ModelArgument, tokenizer: Any = None) -> str | None:
    """``model`` as the ``--model`` value a job records: a name, path or hub id as it is; a
    loaded ``transformers`` model (with its ``tokenizer``) is saved once to
    ``<ila cache>/models/memory-<digest>/`` (the cache of ila.model.loading), named by a
    digest of its config, weights and tokenizer (vocabulary, chat template, special
    tokens), so that the run's config.yaml names a model that
    ``--resume``, the reproduce command and the model fingerprint (ila.model.identity) can
    read. Saving costs one write of the weights; for a large model pass its path instead.
    """
    if model is None or isinstance(model, (str, Path)):
        if tokenizer is not None:
            raise IlaError("tokenizer= goes with a loaded model; a model name or path has its own")
        return None if model is None else str(model)
    if hasattr(model, "peft_config") or hasattr(model, "get_base_model"):
        raise IlaError(
            "model holds peft adapter layers (a PeftModel, or the model its get_base_model() "
            "returns); pass the model without them: model.merge_and_unload() to merge the "
            "adapter, model.unload() to drop it, or the base model as loaded before peft"
        )
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise IlaError(
            "model must be a name, a path, a hub id or a loaded transformers model, "
            f"not a {type(model).__name__}"
        )
    if tokenizer is None:
        raise IlaError("a loaded model needs its tokenizer: pass tokenizer=")
    from transformers import PreTrainedTokenizerBase

    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise IlaError(
            "tokenizer must be a transformers tokenizer (e.g. from AutoTokenizer."
            f"from_pretrained), not a {type(tokenizer).__name__}"
        )
    from ila.model.in_memory import saved_model

    return str(saved_model(model, tokenizer))


def _output_dir(value: Any) -> Path:
    """``output_dir`` as a path; anything else (None included) is refused by name."""
    if isinstance(value, (str, Path)) and str(value):
        return Path(value)
    raise IlaError(
        argument("output_dir"),
        f" must be a directory path (a str or Path), not {short_repr(value)}; "
        "pass where the run goes, e.g. output_dir='runs/x'",
    )


def _keywords(function: Callable[..., Any]) -> tuple[str, ...]:
    """The keyword-only parameters of an API function (for :func:`make_config`'s hints)."""
    parameters = inspect.signature(function).parameters.values()
    return tuple(p.name for p in parameters if p.kind is p.KEYWORD_ONLY)


@_checks_environment
def score(
    model: ModelArgument = None,
    data: DataArgument = None,
    *,
    tokenizer: Any = None,
    output_dir: str | Path,
    scorer: str = "ila",
    config: Any = None,
    overwrite: bool = False,
    resume: bool = False,
    **settings: Any,
) -> ScoreRun:
    """`ila score`: rank the units of ``model`` for aligning it to ``data`` with ``scorer``
    (ILA stages 1-2 by default; docs/scorers.md lists the others)."""
    from ila.jobs.score import score as score_job

    output = _output_dir(output_dir)
    resolved = make_config(
        ScoreConfig,
        config,
        keywords=_keywords(score),
        scorer=scorer,
        model=model_source(model, tokenizer),
        data=data_source(data),
        **settings,
    )
    return score_job(resolved, output, method=scorer, overwrite=overwrite, resume=resume)


@_checks_environment
def select(
    scores: LayerScores | str | Path,
    *,
    tune_top_fraction: float | None = None,
    freeze_bottom_fraction: float | None = None,
    units: Sequence[str] | None = None,
    blocks: Sequence[int] | None = None,
    within_module_type: bool = False,
    output: str | Path | None = None,
    overwrite: bool = False,
    allow_tied_ranking: bool = False,
) -> Selection:
    """`ila select`: apply one rule to a ranking (a LayerScores, a run directory or its
    ``layer_scores.json``); with ``output`` (a file or directory) write ``selection.json``.
    ``within_module_type`` applies a fraction rule within each module type (docs/method.md,
    "Stage 3"). A fraction rule on a ranking that is a tie (ila.core.ties) is refused unless
    ``allow_tied_ranking``."""
    from ila.core.layers import LayerMap
    from ila.core.scores import SCORES_FILE, LayerScores
    from ila.core.selection import SELECTION_FILE, select_units
    from ila.core.ties import require_separated

    scores_file = None
    if not isinstance(scores, LayerScores):
        path = Path(scores)
        scores_file = path / SCORES_FILE if path.is_dir() else path
        scores = LayerScores.load(path)
    if tune_top_fraction is not None or freeze_bottom_fraction is not None:
        origin = str(scores_file or "the scores given")
        require_separated(scores, origin=origin, allow=allow_tied_ranking)
    target = None
    if output is not None:
        target = Path(output)
        target = target / SELECTION_FILE if target.is_dir() or not target.suffix else target
        _check_selection_target(target, overwrite)
    selection = select_units(
        LayerMap.from_dict(scores.layout),
        scores=scores,
        tune_top_fraction=tune_top_fraction,
        freeze_bottom_fraction=freeze_bottom_fraction,
        units=units,
        blocks=blocks,
        within_module_type=within_module_type,
        scores_file=scores_file,
    )
    if target is not None:
        from ila.rundir import RunDir

        # Under the folder's lock (a run there may be writing it), checked again.
        with RunDir(target.parent).locked("select"):
            _check_selection_target(target, overwrite)
            selection.save(target)
    return selection


# `ila select --output-dir` is ``select(output=...)``.
_SELECTION_OUTPUT = argument("output", flag="--output-dir")


def _check_selection_target(target: Path, overwrite: bool) -> None:
    """Refuse a selection.json target that exists (unless ``overwrite``), is a folder, or
    lies in a folder that is a file or cannot be written."""
    from ila.rundir import check_writable

    if target.is_dir():
        raise IlaError(f"{target} is a directory; pass a file name or its folder")
    if target.exists() and not overwrite:
        raise IlaError(
            f"{target} exists; pass ", argument("overwrite"), " or another ", _SELECTION_OUTPUT
        )
    check_writable(target.parent)


@_checks_environment
def finetune(
    model: ModelArgument = None,
    data: DataArgument = None,
    *,
    tokenizer: Any = None,
    output_dir: str | Path,
    scores: LayerScores | str | Path | None = None,
    selection: Selection | str | Path | None = None,
    tune_top_fraction: float | None = None,
    freeze_bottom_fraction: float | None = None,
    units: Sequence[str] | None = None,
    blocks: Sequence[int] | None = None,
    all_units: bool = False,
    within_module_type: bool = False,
    config: Any = None,
    overwrite: bool = False,
    resume: bool = False,
    allow_other_model: bool = False,
    allow_tied_ranking: bool = False,
    **settings: Any,
) -> FinetuneRun:
    """`ila finetune`: tune only the units chosen by one rule (a ranking rule on ``scores``,
    a saved ``selection``, ``units``/``blocks`` by hand, or ``all_units``); the fine-tune
    method (``method="lora"``, ``"full"``, ``"qlora"``) and its steps are settings.
    ``within_module_type`` applies a ranking rule within each module type (docs/method.md,
    "Stage 3"). A ranking rule on a tie (ila.core.ties) is refused unless
    ``allow_tied_ranking``."""
    from ila.jobs.finetune import finetune as finetune_job

    output = _output_dir(output_dir)
    resolved = make_config(
        FinetuneConfig,
        config,
        keywords=_keywords(finetune),
        model=model_source(model, tokenizer),
        data=data_source(data),
        **settings,
    )
    tuning = _tuning_inputs(
        scores,
        selection,
        tune_top_fraction=tune_top_fraction,
        freeze_bottom_fraction=freeze_bottom_fraction,
        units=units,
        blocks=blocks,
        all_units=all_units,
        within_module_type=within_module_type,
        allow_tied_ranking=allow_tied_ranking,
    )
    return finetune_job(
        resolved,
        tuning.chosen,
        output,
        scores=tuning.ranking,
        scores_file=tuning.scores_file,
        overwrite=overwrite,
        resume=resume,
        inputs=tuning.inputs,
        allow_other_model=allow_other_model,
        stage1_run=tuning.stage1_run,
    )


@dataclass
class _TuningInputs:
    """What `finetune` tunes (a saved selection or a rule) and where it came from: the
    ranking a rule reads, its layer_scores.json, the score run it belongs to, and the
    input paths the fine-tune records."""

    chosen: Selection | SelectionRule
    ranking: LayerScores | None = None
    scores_file: Path | None = None
    stage1_run: Path | None = None
    inputs: list[Path | None] = field(default_factory=list)


def _tuning_inputs(
    scores: LayerScores | str | Path | None,
    selection: Selection | str | Path | None,
    *,
    tune_top_fraction: float | None,
    freeze_bottom_fraction: float | None,
    units: Sequence[str] | None,
    blocks: Sequence[int] | None,
    all_units: bool,
    within_module_type: bool,
    allow_tied_ranking: bool,
) -> _TuningInputs:
    """`finetune`'s ``selection`` (loaded from its file), or its rule with the ``scores`` a
    ranking rule needs (loaded from a score run or its layer_scores.json); a ranking rule on
    a tie, or within module types on block scores, is refused before the model loads
    (ila.core.ties; a tie is taken with ``allow_tied_ranking``)."""
    from ila.core.scores import SCORES_FILE, LayerScores
    from ila.core.selection import Selection, SelectionRule
    from ila.core.ties import require_separated

    inputs: list[Path | None] = []
    stage1_run = None
    scores_file: Path | None = None
    if selection is not None:
        if within_module_type:
            raise IlaError(
                argument("within_module_type"),
                " shapes a rule; a saved ",
                argument("selection"),
                " keeps the one it was made with",
            )
        if not isinstance(selection, Selection):
            inputs.append(Path(selection))
            selection = Selection.load(Path(selection))
        return _TuningInputs(selection, inputs=inputs)
    ranked = tune_top_fraction is not None or freeze_bottom_fraction is not None
    if ranked and scores is None:
        raise IlaError(
            argument("tune_top_fraction"),
            "/",
            argument("freeze_bottom_fraction"),
            " need ",
            argument("scores"),
            " (a score run or its layer_scores.json)",
        )
    if scores is not None and not isinstance(scores, LayerScores):
        path = Path(scores)
        inputs.append(path)
        scores_file = path / SCORES_FILE if path.is_dir() else path
        stage1_run = scores_file.parent
        scores = LayerScores.load(path)
    if ranked and scores is not None:  # before the model loads
        origin = str(scores_file or "the scores given")
        require_separated(scores, origin=origin, allow=allow_tied_ranking)
    chosen = SelectionRule.from_kwargs(
        tune_top_fraction=tune_top_fraction,
        freeze_bottom_fraction=freeze_bottom_fraction,
        units=units,
        blocks=blocks,
        all_units=all_units,
        within_module_type=within_module_type,
    )
    if scores is not None and chosen.ranked:
        chosen.check_ranking(scores, origin=str(scores_file or "the scores given"))
    return _TuningInputs(chosen, scores, scores_file, stage1_run, inputs)


@_checks_environment
def evaluate(
    model: ModelArgument = None,
    data: DataArgument = None,
    *,
    tokenizer: Any = None,
    output_dir: str | Path,
    adapter: str | Path | None = None,
    config: Any = None,
    overwrite: bool = False,
    allow_other_model: bool = False,
    **settings: Any,
) -> EvalRun:
    """`ila eval`: held-out loss, exact match and generations of ``model`` (with an
    ``adapter`` or an `ila finetune` run directory applied)."""
    from ila.jobs.evaluate import evaluate as evaluate_job

    output = _output_dir(output_dir)
    resolved = make_config(
        EvalConfig,
        config,
        keywords=_keywords(evaluate),
        model=model_source(model, tokenizer),
        data=data_source(data),
        **settings,
    )
    return evaluate_job(
        resolved,
        output,
        adapter=None if adapter is None else Path(adapter),
        overwrite=overwrite,
        allow_other_model=allow_other_model,
    )


@_checks_environment
def run(
    model: ModelArgument = None,
    data: DataArgument = None,
    *,
    tokenizer: Any = None,
    output_dir: str | Path,
    config: Any = None,
    overwrite: bool = False,
    resume: bool = False,
    allow_tied_ranking: bool = False,
    **settings: Any,
) -> RunResult:
    """`ila run`: score with ILA, select, fine-tune the selection, and (by default) compare
    it with all units and the base model. The rule is a setting (``tune_top_fraction`` or
    ``freeze_bottom_fraction``, with ``within_module_type`` to apply it within each module
    type). A ranking that is a tie (ila.core.ties) stops the run after scoring unless
    ``allow_tied_ranking``."""
    from ila.jobs.run import run as run_job

    output = _output_dir(output_dir)
    resolved = make_config(
        RunConfig,
        config,
        keywords=_keywords(run),
        model=model_source(model, tokenizer),
        data=data_source(data),
        **settings,
    )
    return run_job(
        resolved,
        output,
        overwrite=overwrite,
        resume=resume,
        allow_tied_ranking=allow_tied_ranking,
    )


@_checks_environment
def compare(
    runs: Sequence[str | Path],
    *,
    output_dir: str | Path | None = None,
    fractions: Sequence[float] | None = None,
    overwrite: bool = False,
    allow_other_model: bool = False,
) -> Comparison:
    """`ila compare`: overlap of the important units of two or more runs of one model;
    with ``output_dir`` also write comparison.json, comparison.md and the figures."""
    from ila.analysis.compare import DEFAULT_FRACTIONS, compare_scores, load_runs

    if isinstance(runs, (str, bytes, Path)):
        raise IlaError(
            f"runs takes a list of run directories, got the single {type(runs).__name__} "
            f"{short_repr(str(runs))}; pass [run_a, run_b, ...]"
        )
    output = None if output_dir is None else _output_dir(output_dir)
    loaded = load_runs([Path(r) for r in runs])
    comparison = compare_scores(
        [r.scores for r in loaded],
        [r.label for r in loaded],
        DEFAULT_FRACTIONS if fractions is None else fractions,
        sources=[r.source for r in loaded],
        allow_other_model=allow_other_model,
    )
    if output is not None:
        from ila.reporting.comparison import write_comparison_report
        from ila.reporting.output import report_directory

        with report_directory(
            output,
            inputs=[Path(r) for r in runs],
            overwrite=overwrite,
            command="compare",
        ) as tmp:
            logging.getLogger(__name__).info(
                "compare: writing comparison.json, comparison.md and the figures of %d runs",
                len(loaded),
            )
            write_comparison_report(comparison, tmp, scores=[r.scores for r in loaded])
    return comparison


@_checks_environment
def report(run_dir: str | Path, *, output_dir: str | Path, overwrite: bool = False) -> Path:
    """`ila report`: one HTML page (and report.md) of a finished run; returns the page."""
    from ila.reporting.output import report_directory
    from ila.reporting.run_record import load_run_record
    from ila.reporting.run_report import RUN_REPORT_HTML, write_run_report

    output = _output_dir(output_dir)
    record = load_run_record(Path(run_dir))
    with report_directory(
        output, inputs=[Path(run_dir)], overwrite=overwrite, command="report"
    ) as tmp:
        write_run_report(record, tmp)
    return output / RUN_REPORT_HTML


@_checks_environment
def export(
    selection: Selection | str | Path,
    *,
    format: str,
    output: str | Path | None = None,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.05,
) -> str:
    """`ila export`: the selection as configuration for another trainer (peft, axolotl,
    llama-factory, swift, list, json); with ``output`` also written to that file."""
    from ila.analysis.exports import export_selection
    from ila.core.layers import LayerMap
    from ila.core.selection import Selection
    from ila.files import atomic_write_text

    if not isinstance(selection, Selection):
        selection = Selection.load(Path(selection))
    text = export_selection(
        selection,
        LayerMap.from_dict(selection.layout),
        format,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
    )
    if output is not None:
        output = Path(output)
        if output.is_dir():
            raise IlaError(
                argument("output"),
                f" {output} is a directory; pass a file path, e.g. "
                f"{output / ('selection.' + EXPORT_SUFFIX[format])}",
            )
        try:
            atomic_write_text(output, text)
        except OSError as exc:
            raise IlaError(
                argument("output"), f" {output}: cannot write it ({exc.strerror})"
            ) from exc
    return text


EXPORT_SUFFIX = {
    "peft": "json",
    "axolotl": "yaml",
    "llama-factory": "yaml",
    "swift": "yaml",
    "list": "txt",
    "json": "json",
}


@_checks_environment
def plan(
    model: ModelArgument = None,
    *,
    tokenizer: Any = None,
    selection: Selection | str | Path | None = None,
    config: Any = None,
    **settings: Any,
) -> Plan:
    """`ila plan`: memory (and, given ``tokens_per_second``, time) of stages 1, 2 and the
    selective fine-tune, from the model's config alone."""
    from ila.analysis.plan import plan_run
    from ila.core.selection import Selection

    resolved = make_config(
        PlanConfig,
        config,
        keywords=_keywords(plan),
        model=model_source(model, tokenizer),
        **settings,
    )
    if selection is not None and not isinstance(selection, Selection):
        selection = Selection.load(Path(selection))
    return plan_run(resolved, selection=selection)
