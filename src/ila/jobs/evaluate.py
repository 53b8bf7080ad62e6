"""`ila eval` and the evaluation step of `ila run`: run directories for evaluation.
This module only evaluates; `ila run` trains what it compares (ila.jobs.run).

``ila eval --output-dir OUT`` writes::

    run_state.json, config.yaml, environment.json, ila.log   (as every command)
    eval_results.json   schema_version 1: model, adapter, data, split, metrics, lm_eval
    generations.jsonl   the greedy generations behind exact match, one per line

``ila run`` evaluates each variant it trained into ``RUN/eval/<variant>/`` (same files)
and writes ``RUN/eval/variants.json``: ``{"schema_version": 1, "variants": {name:
metrics}}`` with the variants ``base`` (the model before tuning), ``all-units`` (LoRA on
every unit, same steps) and ``selected`` (the selective fine-tune).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ila.config import (
    DataConfig,
    EvalConfig,
    EvalSettings,
    ModelConfig,
    RunConfig,
    config_to_dict,
    input_paths,
    setting,
)
from ila.data.formats import Example
from ila.errors import IlaError
from ila.evaluation.evaluate import EvalResult, evaluate_model
from ila.files import atomic_write_json, atomic_write_text
from ila.jobs.inputs import ModelLoad, SharedInputs
from ila.model.inference import load_model_for_eval, update_attached
from ila.run_files import EVAL_FILE, GENERATIONS_FILE
from ila.run_files import EVAL_SCHEMA_VERSION as SCHEMA_VERSION
from ila.run_files import EVAL_VARIANTS_FILE as COMPARISON_FILE
from ila.rundir import RunDir, check_output_dir
from ila.train.parallel import is_main_process, require_supported_launch

__all__ = [
    "COMPARISON_FILE",
    "EVAL_FILE",
    "GENERATIONS_FILE",
    "EvalRun",
    "evaluate",
    "evaluate_variants",
    "load_eval_examples",
]


log = logging.getLogger(__name__)


@dataclass
class EvalRun:
    """What `ila eval` produced."""

    output_dir: Path
    result: EvalResult


def load_eval_examples(
    data: DataConfig,
    settings: EvalSettings,
    objective: str = "sft",
    shared: SharedInputs | None = None,
) -> list[Example]:
    """The examples to evaluate: the held-out split made exactly as training makes it
    (same data, ``--eval-fraction`` and ``--split-seed``), or every example with split
    ``all``; preference pairs (ila.data.preference) under ``--objective dpo``. ``shared``:
    the split an enclosing `ila run` holds (ila.jobs.inputs)."""
    _check_held_out(data, settings)
    examples, _, held_out = (shared or SharedInputs(data, objective)).split()
    return examples if settings.split == "all" else held_out


def _check_held_out(data: DataConfig, settings: EvalSettings) -> None:
    """An evaluation of the held-out split needs one."""
    if settings.split != "all" and data.eval_fraction == 0:
        raise IlaError(
            setting("eval", "split"),
            " eval needs held-out examples but ",
            setting("data", "eval_fraction"),
            " is 0; pass ",
            setting("data", "eval_fraction"),
            " > 0 (as in training) or ",
            setting("eval", "split"),
            " all",
        )


def evaluate(
    config: EvalConfig,
    output_dir: Path,
    *,
    adapter: Path | None = None,
    overwrite: bool = False,
    allow_other_model: bool = False,
) -> EvalRun:
    """`ila eval`: measure ``config.model.model`` (with ``adapter``) on ``config.data``.

    Inputs are read and checked (data, lm-eval availability, model, adapter and that the
    adapter was made on this model, unless ``allow_other_model``) before the output
    directory is created, so bad input leaves nothing behind.
    """
    require_supported_launch(config.model.device, command="eval")
    output_dir = Path(output_dir)
    main = is_main_process()
    inputs = [*input_paths(config), adapter]
    if main:
        check_output_dir(output_dir, overwrite=overwrite, inputs=inputs, resumable=False)
    check_eval_inputs(config.eval)
    examples = (
        load_eval_examples(config.data, config.eval, config.train.objective)
        if config.eval.measures_data("eval")
        else None
    )
    model, tokenizer, other_model = load_model_for_eval(
        config.model.model,
        adapter,
        dtype=config.model.dtype,
        device=config.model.device,
        threads=config.model.threads,
        allow_other_model=allow_other_model,
        quantize_4bit=config.model.quantization == "nf4",
        max_length=config.data.max_length,
    )
    resolved = config_to_dict(config)
    resolved["adapter"] = str(adapter) if adapter is not None else None
    with RunDir(output_dir).open("eval", resolved, overwrite=overwrite, inputs=inputs):
        result = evaluate_model(
            model,
            tokenizer,
            examples,
            config.eval,
            max_length=config.data.max_length,
            template=config.data.template,
        )
        if main:
            write_eval_results(
                output_dir,
                result,
                model=config.model,
                data=config.data,
                settings=config.eval,
                adapter=adapter,
                other_model=other_model,
            )
            RunDir(output_dir).mark("eval")
    return EvalRun(output_dir, result)


def write_eval_results(
    output_dir: Path,
    result: EvalResult,
    *,
    model: ModelConfig,
    data: DataConfig,
    settings: EvalSettings,
    adapter: Path | None,
    other_model: str | None = None,
) -> None:
    """Write ``eval_results.json`` and ``generations.jsonl`` into ``output_dir``
    (``other_model``: the note that the adapter was made on another model). ``data`` and
    ``split`` are null when nothing was measured on data (only multiple choice, lm-eval)."""
    on_data = "loss" in result.metrics
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        output_dir / GENERATIONS_FILE,
        "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in result.generations),
    )
    atomic_write_json(
        output_dir / EVAL_FILE,
        {
            "schema_version": SCHEMA_VERSION,
            "model": model.model,
            "adapter": str(adapter) if adapter is not None else None,
            "other_model": other_model,
            "data": data.data if on_data else None,
            "split": settings.split if on_data else None,
            "metrics": result.metrics,
            "lm_eval": result.lm_eval,
        },
    )


def evaluate_variants(
    variants: dict[str, Path | None],
    *,
    model: ModelConfig,
    data: DataConfig,
    settings: EvalSettings,
    output_dir: Path,
    objective: str = "sft",
    shared: SharedInputs | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate the base model with each adapter of ``variants`` (``None``: the base
    itself) on the same examples; write ``output_dir/<variant>/`` and
    ``output_dir/variants.json``. Returns the metrics of each variant.

    The base is read once (``shared``: the one an enclosing `ila run` holds) and each
    adapter is put on it and taken off again (ila.model.inference.update_attached); the
    held-out split is tokenized once for all variants.
    """
    shared = shared or SharedInputs(data, objective)
    examples = (
        load_eval_examples(data, settings, objective, shared)
        if settings.measures_data("run")
        else None
    )
    base, tokenizer = shared.model(ModelLoad.of(model))
    compared: dict[str, dict[str, Any]] = {}
    for name, adapter in variants.items():
        with update_attached(base, model.model, adapter) as attached:
            log.info("evaluating %s", name)
            result = evaluate_model(
                attached.model,
                tokenizer,
                examples,
                settings,
                max_length=data.max_length,
                template=data.template,
                features_of=lambda chosen: shared.held_out_features(chosen, tokenizer),
            )
        write_eval_results(
            output_dir / name, result, model=model, data=data, settings=settings, adapter=adapter
        )
        compared[name] = {k: v for k, v in result.metrics.items() if not isinstance(v, dict)}
    atomic_write_json(
        output_dir / COMPARISON_FILE, {"schema_version": SCHEMA_VERSION, "variants": compared}
    )
    return compared


def check_eval_inputs(settings: EvalSettings) -> None:
    """Refuse unusable evaluation inputs (missing lm-eval, bad MC files) before any work."""
    if settings.lm_eval_tasks:
        from ila.evaluation.lm_eval_tasks import require_lm_eval

        require_lm_eval()
    if settings.mc_data:
        from ila.evaluation.multiple_choice import load_mc_questions

        load_mc_questions(Path(settings.mc_data), limit=settings.mc_limit)


def evaluate_run(
    config: RunConfig, run_dir: RunDir, *, all_units: bool, shared: SharedInputs | None = None
) -> dict[str, dict[str, Any]]:
    """The evaluation step of `ila run`: ``base``, ``all-units`` (when the run trained the
    baseline, ``all_units``) and ``selected`` on the same held-out examples, into
    ``run_dir/eval``. Evaluation and writing happen on rank 0 only (other ranks return an
    empty dict); a resumed run evaluates again."""
    variants: dict[str, Path | None] = {"base": None}
    if all_units:
        variants["all-units"] = run_dir.finetune_all_units.path
    variants["selected"] = run_dir.finetune.path
    if not is_main_process():
        return {}
    compared = evaluate_variants(
        variants,
        model=config.model,
        data=config.data,
        settings=config.eval,
        output_dir=run_dir.evaluation,
        objective=config.train.objective,
        shared=shared,
    )
    run_dir.mark("eval")
    return compared
