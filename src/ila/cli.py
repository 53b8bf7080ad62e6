"""The `ila` command line: parse, call one library function, print the result.

This is the only module that prints. Flags are generated from the config dataclasses
(ila.config), so every setting has exactly one flag, one YAML key and one default.
``ila --help`` imports no torch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import sys
import time
import types
import typing
import warnings
from pathlib import Path
from typing import Any, get_type_hints

from ila import __version__
from ila.config import (
    EvalConfig,
    FinetuneConfig,
    PlanConfig,
    RunConfig,
    ScoreConfig,
    flag_name,
    iter_settings,
    keyword_name,
)
from ila.errors import IlaError, short_repr
from ila.progress import format_duration

if typing.TYPE_CHECKING:
    from ila.core.selection import Selection
    from ila.jobs.finetune import FinetuneRun
    from ila.jobs.score import ScoreRun

__all__ = ["build_parser", "main"]

# The command's wall time counts from here: the `ila` entry point imports this module first.
_STARTED = time.perf_counter()

_SECTION_TITLES = {
    "model": "model",
    "data": "data",
    "lora": "stage-1 LoRA adapter",
    "train": "training (all stages)",
    "stage1": "stage 1: LoRA until epsilon-stable",
    "stage2": "stage 2: learned gates",
    "finetune": "stage 3: fine-tune the selected units",
    "run": "after scoring (ila run): selection and fine-tuning",
    "eval": "evaluation",
    "source": "an update that already exists (stage 2 only, instead of stage 1)",
}


def _add_config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per config field; defaults are suppressed so YAML values survive."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for section, f, section_cls in iter_settings(config_cls):
        group = groups.get(section) or parser.add_argument_group(
            _SECTION_TITLES.get(section, section)
        )
        groups[section] = group
        hint = get_type_hints(section_cls)[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs: dict[str, Any] = {
            "dest": f"{section}.{f.name}",
            "default": argparse.SUPPRESS,
            "help": f"{f.metadata.get('help', '')} (default: {default})",
        }
        base = _base_type(hint)
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif base is list:
            kwargs["nargs"] = "+"
            kwargs["metavar"] = "NAME"
        else:
            kwargs["type"] = base
            kwargs["metavar"] = f.name.split("_")[-1].upper()
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        group.add_argument(flag_name(section, f.name), **kwargs)


def _base_type(hint: Any) -> type:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return list
    return hint


def _score_flags(
    parser: argparse.ArgumentParser, config_cls: type = ScoreConfig, *, resumable: bool = True
) -> None:
    parser.add_argument("--output-dir", type=Path, required=True, help="run directory (created)")
    parser.add_argument("--config", type=Path, help="YAML file of settings (flags override it)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing run in --output-dir"
    )
    if resumable:
        parser.add_argument(
            "--resume",
            action="store_true",
            help="continue the interrupted run in --output-dir (same settings): finished "
            "stages are kept, a stage continues from its last --save-steps checkpoint",
        )
    _add_config_flags(parser, config_cls)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ila",
        description="Find the layers of an LLM that matter for aligning it to your data "
        "(ILA, arXiv 2410.17875), and fine-tune only those.",
    )
    parser.add_argument("--version", action="version", version=f"ila {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _run_parser,
        _score_parser,
        _finetune_parser,
        _select_parser,
        _export_parser,
        _eval_parser,
        _plan_parser,
        _compare_parser,
        _report_parser,
        _ls_parser,
    ):
        add(sub)
    return parser


_ALLOW_HELP = (
    "use a ranking, adapter or run made on another model than --model (their fingerprints "
    "differ), e.g. a ranking moved between two fine-tunes of one base; the run records it"
)


def _add_allow_other_model(p: argparse.ArgumentParser, help_text: str = _ALLOW_HELP) -> None:
    p.add_argument("--allow-other-model", action="store_true", help=help_text)


def _add_allow_tied_ranking(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-tied-ranking",
        action="store_true",
        help="select from a ranking that is a tie (its importances do not separate, or "
        "stage 1 learned nothing), whose order is then the model's; refused without it",
    )


def _add_rule_flags(
    parser: argparse.ArgumentParser, *, with_all: bool, with_selection: bool
) -> None:
    rule = parser.add_mutually_exclusive_group(required=True)
    rule.add_argument("--tune-top-fraction", type=float, metavar="F", help="tune the top F")
    rule.add_argument(
        "--freeze-bottom-fraction", type=float, metavar="F", help="freeze the bottom F"
    )
    rule.add_argument("--units", nargs="+", metavar="NAME", help="tune exactly these units")
    rule.add_argument(
        "--blocks", type=_int_list, metavar="I,J,..", help="tune these blocks, e.g. 3,5,7"
    )
    if with_all:
        rule.add_argument("--all-units", action="store_true", help="tune every unit (baseline)")
    if with_selection:
        rule.add_argument("--selection", type=Path, help="a selection.json (or its directory)")
    parser.add_argument(
        "--within-module-type",
        action="store_true",
        help="apply the fraction within each module type (the top or bottom F of each "
        "type's units, as Spectrum selects) instead of over the whole ranking; module "
        "scores only",
    )


def _within_text(selection: Selection) -> str:
    """What a summary line adds for a rule applied within module types: the units tuned
    of each type (``within module type: q_proj 9/30, ...``), or nothing."""
    if not selection.within_module_type:
        return ""
    counts = selection.by_module_type()
    short = {kind: kind.rsplit(".", 1)[-1] for kind in counts}
    if len(set(short.values())) < len(short):  # e.g. attn.c_proj and mlp.c_proj
        short = {kind: kind for kind in counts}
    parts = [f"{short[kind]} {chosen}/{total}" for kind, (chosen, total) in counts.items()]
    return " within module type: " + ", ".join(parts)


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated block indices, got {short_repr(text)}"
        ) from exc


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The config flags given on the command line as the API's keywords
    (``--stage1-max-steps 30`` -> ``stage1_max_steps=30``; ``--model``, ``--data`` too) and
    ``--config`` as ``config``: the API resolves them (ila.config.resolve), once."""
    settings: dict[str, Any] = {"config": args.config}
    for key, value in vars(args).items():
        if "." in key:
            section, name = key.split(".", 1)
            settings[keyword_name(section, name)] = value
    return settings


def _print_score(result: ScoreRun, header: str) -> None:
    s = result.summary
    stable = "epsilon-stable" if s.stage1_stable else "hit the step cap"
    print(f"{header}: {s.method} on {s.model}, {s.units} {s.unit_kind} units")
    if s.source:
        print(f"  update: {s.source.get('kind')} {s.source.get('path', '')} (no stage 1)")
    elif s.T is not None:
        print(f"  stage 1: T = {s.T} steps ({stable})")
    times = ", ".join(f"{k} {v:.1f}s" for k, v in s.seconds.items())
    print(f"  time: {times}")
    if s.tie:
        print(f"  top units: none, the ranking is a tie: {s.tie}")
    else:
        print(f"  top units: {', '.join(s.top_units)}")
    for line in s.stability:
        print(f"  stability: {line}")
    print(f"  scores: {s.scores_file}")
    print(f"  report: {s.report_dir}")


def _scorer(args: argparse.Namespace) -> str:
    """``--scorer``, or the deprecated ``--method`` of `ila score` (one release more)."""
    if args.scorer_old is not None:
        if args.scorer is not None and args.scorer != args.scorer_old:
            raise IlaError(f"--scorer {args.scorer} and --method {args.scorer_old} disagree")
        logging.getLogger("ila").warning(
            "'ila score --method' is deprecated, use --scorer (--method now names the "
            "fine-tune kind only)"
        )
    return args.scorer or args.scorer_old or "ila"


def _score_parser(sub: Any) -> None:
    p = sub.add_parser(
        "score",
        help="rank the units of a model on alignment data (ILA stages 1-2, or another scorer)",
        description="Stage 1 fine-tunes LoRA until training is epsilon-stable; stage 2 learns "
        "a sigmoid gate per unit under a sparsity budget; the gates rank the units. "
        "Writes layer_scores.json and a report under --output-dir.",
    )
    p.add_argument("--scorer", help="ranking method (default ila; see 'ila ls scorers')")
    p.add_argument(
        "--method", dest="scorer_old", help="the older spelling of --scorer (deprecated)"
    )
    _score_flags(p)


def _cmd_score(args: argparse.Namespace) -> int:
    from ila import api

    args.method = _scorer(args)

    result = api.score(
        **_settings(args),
        output_dir=args.output_dir,
        scorer=args.method,
        overwrite=args.overwrite,
        resume=args.resume,
    )
    _print_score(result, "ila score")
    return 0


def _run_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="the main job: identify important units with ILA (then select, fine-tune, evaluate)",
        description="Run ILA end to end on a model and dataset (defaults: the embedded "
        "SmolLM2-135M and the embedded ila-instruct data): score the units (stages 1-2), "
        "select the top ones (--tune-top-fraction, or --freeze-bottom-fraction), fine-tune "
        "only those (--method, --max-steps and the other settings of 'ila finetune') into "
        "OUTPUT_DIR/finetune.",
    )
    _score_flags(p, RunConfig)
    _add_allow_tied_ranking(p)


def _cmd_run(args: argparse.Namespace) -> int:
    from ila import api

    result = api.run(
        **_settings(args),
        output_dir=args.output_dir,
        overwrite=args.overwrite,
        resume=args.resume,
        allow_tied_ranking=args.allow_tied_ranking,
    )
    _print_score(result.score, "ila run")
    selection = result.selection
    total = len(selection.selected) + len(selection.frozen)
    print(
        f"  selection: {len(selection.selected)} of {total} units "
        f"({selection.rule} {selection.value}{_within_text(selection)}) in "
        f"{args.output_dir / 'selection.json'}"
    )
    if result.finetune is not None:
        _print_finetune(result.finetune, "  fine-tune")
    if result.evaluation:
        print(f"  evaluation ({args.output_dir / 'eval'}){_evaluated_on(result.evaluation)}:")
        for variant, metrics in result.evaluation.items():
            print(f"    {variant:<10} {_variant_line(metrics)}")
    print(f"  wall time: {format_duration(time.perf_counter() - _STARTED)}")
    return 0


def _evaluated_on(evaluation: dict[str, dict[str, Any]]) -> str:
    """What the variants were measured on (the same for each), e.g. ``" on 32 examples,
    8 greedy answers"``."""
    first = next(iter(evaluation.values()))
    parts = []
    if "num_examples" in first:
        parts.append(f"{first['num_examples']} examples")
    if first.get("exact_match_examples"):
        parts.append(f"{first['exact_match_examples']} greedy answers")
    if "mc_questions" in first:
        parts.append(f"{first['mc_questions']} multiple-choice questions")
    return " on " + ", ".join(parts) if parts else ""


def _variant_line(metrics: dict[str, Any]) -> str:
    """One variant's metrics in the `ila run` table."""
    parts = []
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.3f}")
    if metrics.get("exact_match") is not None:
        parts.append(f"exact match {metrics['exact_match']:.3f}")
    if metrics.get("preference_accuracy") is not None:
        parts.append(f"prefers chosen {metrics['preference_accuracy']:.3f}")
    if metrics.get("mc_accuracy") is not None:
        parts.append(f"multiple choice {metrics['mc_accuracy']:.3f}")
    return ", ".join(parts)


def _eval_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="measure a model (and adapter): held-out loss, exact match, generations",
        description="Evaluate a model, optionally with an adapter or an `ila finetune` run "
        "directory, on held-out examples of --data (the split training made, by default): "
        "response loss and perplexity, exact match of greedy answers where the data has "
        "checkable answers, multiple-choice accuracy from MMLU-layout files "
        "(--eval-mc-data), and lm-evaluation-harness tasks when it is installed.",
    )
    _score_flags(p, EvalConfig, resumable=False)  # an evaluation is re-run, not resumed
    p.add_argument(
        "--adapter",
        type=Path,
        help="a peft adapter directory, or an `ila finetune` output directory (adapter/ "
        "or changed_weights/) to apply to --model",
    )
    _add_allow_other_model(p)


def _cmd_eval(args: argparse.Namespace) -> int:
    from ila import api
    from ila.jobs.evaluate import EVAL_FILE

    result = api.evaluate(
        **_settings(args),
        output_dir=args.output_dir,
        adapter=args.adapter,
        overwrite=args.overwrite,
        allow_other_model=args.allow_other_model,
    )
    config = _recorded_config(args.output_dir)
    target = config["model"]["model"] + (f" + {args.adapter}" if args.adapter else "")
    where = f" on {config['data']['data']} ({config['eval']['split']} split)"
    print(f"ila eval: {target}{where if 'loss' in result.result.metrics else ''}")
    _print_metrics(result.result.metrics, "  ")
    print(f"  results: {args.output_dir / EVAL_FILE}")
    return 0


def _recorded_config(output_dir: Path) -> dict[str, Any]:
    """The settings a job recorded in its run directory (config.yaml), as resolved."""
    import yaml

    from ila.rundir import CONFIG_FILE

    return yaml.safe_load((output_dir / CONFIG_FILE).read_text(encoding="utf-8"))


def _print_metrics(metrics: dict[str, Any], pad: str) -> None:
    m = metrics
    if "loss" in m:
        print(
            f"{pad}loss {m['loss']:.4f}, perplexity {m['perplexity']:.3f} "
            f"on {m['response_tokens']} response tokens of {m['num_examples']} examples"
        )
    if m.get("exact_match") is not None:
        print(f"{pad}exact match {m['exact_match']:.3f} on {m['exact_match_examples']} answers")
    if m.get("preference_accuracy") is not None:
        print(
            f"{pad}prefers the chosen reply in {m['preference_accuracy']:.3f} of "
            f"{m['preference_pairs']} pairs (mean log-prob margin {m['preference_margin']:.3f})"
        )
    if m.get("mc_accuracy") is not None:
        print(f"{pad}multiple choice {m['mc_accuracy']:.3f} on {m['mc_questions']} questions")


def _finetune_parser(sub: Any) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune only the selected units (LoRA, full or QLoRA) on the HF Trainer",
        description="Stage 3 of ILA: tune the units chosen from a ranking (--scores with one "
        "rule), from a selection.json (--selection), or typed by hand (--units/--blocks); "
        "everything else is frozen. --all-units tunes every unit (the baseline).",
    )
    p.add_argument("--output-dir", type=Path, required=True, help="run directory (created)")
    p.add_argument("--config", type=Path, help="YAML file of settings (flags override it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --output-dir from its last --save-steps checkpoint",
    )
    p.add_argument("--scores", type=Path, help="a score run directory or layer_scores.json")
    _add_rule_flags(p, with_all=True, with_selection=True)
    _add_allow_other_model(p)
    _add_allow_tied_ranking(p)
    _add_config_flags(p, FinetuneConfig)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from ila import api

    result = api.finetune(
        **_settings(args),
        output_dir=args.output_dir,
        scores=args.scores,
        selection=args.selection,
        tune_top_fraction=args.tune_top_fraction,
        freeze_bottom_fraction=args.freeze_bottom_fraction,
        units=args.units,
        blocks=args.blocks,
        all_units=args.all_units,
        within_module_type=args.within_module_type,
        overwrite=args.overwrite,
        resume=args.resume,
        allow_other_model=args.allow_other_model,
        allow_tied_ranking=args.allow_tied_ranking,
    )
    _print_finetune(result, "ila finetune")
    return 0


def _print_finetune(result: FinetuneRun, header: str) -> None:
    s = result.summary
    pad = " " * (len(header) - len(header.lstrip()) + 2)
    print(
        f"{header}: {s.method} on {s.num_selected} of {s.num_units} units "
        f"({s.selection_rule}{_within_text(result.selection)}), "
        f"{s.trainable_parameters:,} of {s.parameters:,} "
        "parameters trainable"
    )
    print(f"{pad}{s.steps} steps in {s.seconds:.1f}s ({s.seconds_per_step:.3f} s/step)")
    if s.eval_loss is not None:
        print(f"{pad}held-out loss: {s.eval_loss:.4f} on {s.num_eval_examples} examples")
    if s.preference.get("preference_accuracy") is not None:
        print(
            f"{pad}held-out pairs: prefers the chosen reply in "
            f"{s.preference['preference_accuracy']:.3f} of {s.preference['preference_pairs']}"
        )
    if s.other_model:
        print(f"{pad}note: {s.other_model}")
    print(f"{pad}outputs: {result.output_dir}")


def _select_parser(sub: Any) -> None:
    p = sub.add_parser(
        "select",
        help="choose the units to tune from a ranking (or by hand); writes selection.json",
        description="Apply one selection rule to a ranking (ILA stage 3). Rounding: "
        "k = max(1, floor(F * N + 0.5)) units. No model is loaded: the model layout is "
        "read from the scores file.",
    )
    p.add_argument("scores", type=Path, help="a run directory or a layer_scores.json file")
    p.add_argument(
        "--output-dir", type=Path, help="where selection.json goes (default: beside the scores)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing selection.json")
    _add_allow_tied_ranking(p)
    _add_rule_flags(p, with_all=False, with_selection=False)


def _cmd_select(args: argparse.Namespace) -> int:
    from ila import api
    from ila.core.scores import SCORES_FILE
    from ila.core.selection import SELECTION_FILE

    scores_file = args.scores / SCORES_FILE if args.scores.is_dir() else args.scores
    target = (args.output_dir or scores_file.parent) / SELECTION_FILE
    selection = api.select(
        args.scores,
        tune_top_fraction=args.tune_top_fraction,
        freeze_bottom_fraction=args.freeze_bottom_fraction,
        units=args.units,
        blocks=args.blocks,
        within_module_type=args.within_module_type,
        output=target,
        overwrite=args.overwrite,
        allow_tied_ranking=args.allow_tied_ranking,
    )
    total = len(selection.selected) + len(selection.frozen)
    print(
        f"ila select: {len(selection.selected)} of {total} units to tune "
        f"({selection.rule} {selection.value}{_within_text(selection)}); written to {target}"
    )
    if selection.source.get("tied_ranking"):
        print("  note: the ranking is a tie, so these are the model's first units (as asked)")
    return 0


def _export_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a selection as configuration for other trainers (peft, axolotl, ...)",
        description="Export selection.json for peft, Axolotl, LLaMA-Factory, ms-swift, or as a "
        "plain list/JSON, so the trainer you already use tunes exactly the selected units.",
    )
    p.add_argument("selection", type=Path, help="a directory with selection.json, or the file")
    p.add_argument(
        "--format",
        required=True,
        choices=["peft", "axolotl", "llama-factory", "swift", "list", "json"],
        help="export format",
    )
    p.add_argument("--output", type=Path, help="file to write (default: print)")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank in LoRA formats")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha in LoRA formats")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout")


def _cmd_export(args: argparse.Namespace) -> int:
    from ila import api

    text = api.export(
        args.selection,
        format=args.format,
        output=args.output,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
    )
    if args.output is None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        print(f"ila export: {args.format} written to {args.output}")
    return 0


def _plan_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="estimate memory (and time) of score and fine-tune without loading weights",
        description="Build the model from its config on the meta device and print, per stage "
        "(stage 1 LoRA, stage 2 gates, the selective fine-tune): trainable parameters, "
        "weight, gradient, Adam and activation memory, tokens per step, and a time estimate "
        "when --tokens-per-second is given. Same settings as 'ila score' and 'ila finetune'.",
    )
    p.add_argument("--config", type=Path, help="YAML file of settings (flags override it)")
    p.add_argument(
        "--selection", type=Path, help="a selection.json (or its directory) for the fine-tune"
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    _add_config_flags(p, PlanConfig)


def _cmd_plan(args: argparse.Namespace) -> int:
    import json

    from ila import api

    plan = api.plan(**_settings(args), selection=args.selection)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.to_table())
    return 0


def _compare_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="overlap of the important units of several runs (Jaccard, rank correlation)",
        description="For every pair of runs of one model: Jaccard, shared fraction |A n B|/k "
        "and kappa of the important sets at each fraction and of the bottom sets (the least "
        "important units; always at 25%), each next to what random sets give, the top sets "
        "also next to the structural null and within module type; Spearman and Kendall "
        "tau-b of the importances. Writes comparison.json, comparison.md, pairwise.png and "
        "overlap_curves.png into --output-dir.",
    )
    p.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN", help="run directories or layer_scores.json"
    )
    p.add_argument("--output-dir", type=Path, required=True, help="directory for the outputs")
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        metavar="K",
        help="fractions of units in the important set, each in (0, 1] (default: 0.1 0.25 0.5 "
        "0.75); the bottom sets are compared at these and at 0.25",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    _add_allow_other_model(
        p,
        "compare runs of models with one layout but different files (fingerprints), e.g. a "
        "base and its fine-tune; the comparison says so",
    )


def _cmd_compare(args: argparse.Namespace) -> int:
    from ila import api

    comparison = api.compare(
        args.runs,
        output_dir=args.output_dir,
        fractions=args.fractions,
        overwrite=args.overwrite,
        allow_other_model=args.allow_other_model,
    )
    print(
        f"ila compare: {len(comparison.runs)} runs of {comparison.model_id}, "
        f"{comparison.num_units} {comparison.unit_kind} units, {len(comparison.pairs)} pairs"
    )
    if comparison.models_differ:
        print("  note: the runs come from models with different files (--allow-other-model)")
    for s in comparison.by_fraction:
        print(
            f"  top {100 * s.fraction:g}% (k = {s.k}): mean Jaccard {s.mean_jaccard:.3f} "
            f"(min {s.min_jaccard:.3f}, max {s.max_jaccard:.3f}; random {s.random_jaccard:.3f}, "
            f"structural null {s.structural_null_jaccard:.3f}); within-type Jaccard "
            f"{s.mean_within_type_jaccard:.3f} (random {s.chance_within_type_jaccard:.3f})"
        )
        print(f"    {_shared_and_kappa(s)}")
    for b in comparison.bottom:
        print(
            f"  bottom {100 * b.fraction:g}% (k = {b.k}): mean Jaccard {b.mean_jaccard:.3f} "
            f"(random {b.chance_jaccard:.3f}); {_shared_and_kappa(b)}"
        )
    print(f"  outputs: {args.output_dir} (comparison.json, comparison.md, *.png)")
    return 0


def _shared_and_kappa(summary: Any) -> str:
    """Mean shared fraction (with its chance) and kappa of an ``ila compare`` summary row."""
    kappa = "-" if summary.mean_kappa is None else f"{summary.mean_kappa:.3f}"
    return (
        f"mean shared fraction |A n B|/k {summary.mean_shared_fraction:.3f} "
        f"(random {summary.chance_shared_fraction:.3f}), mean kappa {kappa} (random 0)"
    )


def _report_parser(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page (and markdown) describing a finished run",
        description="Build report.html (opens from the file, no server), report.md and its "
        "figures from a finished 'ila score' or 'ila run' directory: stage-1 loss with T, "
        "stage-2 gates, unit heatmap, block plot, selection, fine-tune and evaluation "
        "metrics, versions and the command that reproduces the run.",
    )
    p.add_argument("run", type=Path, help="a finished run directory")
    p.add_argument("--output-dir", type=Path, required=True, help="directory for the report")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")


def _cmd_report(args: argparse.Namespace) -> int:
    from ila import api

    page = api.report(args.run, output_dir=args.output_dir, overwrite=args.overwrite)
    print(f"ila report: {page} (and report.md)")
    return 0


def _ls_parser(sub: Any) -> None:
    p = sub.add_parser("ls", help="list available things: scorers, data presets")
    p.add_argument("what", choices=["scorers", "presets"])


def _cmd_ls(args: argparse.Namespace) -> int:
    if args.what == "scorers":
        from ila.scorers import SCORERS

        for name, (_, _, description) in SCORERS.items():
            print(f"{name:16s} {description}")
    else:
        from ila.data import PRESETS
        from ila.data.preference import PREFERENCE_PRESETS

        # Every preset with the objective it is for (--objective sft, the default, or dpo).
        for name, description in PRESETS.items():
            print(f"{name:16s} [sft] {description}")
        for name, description in PREFERENCE_PRESETS.items():
            print(f"{name:16s} [dpo] {description}")
    return 0


_COMMANDS = {
    "run": _cmd_run,
    "score": _cmd_score,
    "finetune": _cmd_finetune,
    "select": _cmd_select,
    "export": _cmd_export,
    "ls": _cmd_ls,
    "compare": _cmd_compare,
    "report": _cmd_report,
    "plan": _cmd_plan,
    "eval": _cmd_eval,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # The run's ila.log records INFO whatever the console shows: filter at the console handler.
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    if args.quiet:
        # The Hugging Face switch for progress bars; ila.train.trainer reads it too.
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    # peft 0.21 calls an API that transformers 5 deprecates; not actionable for users.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    from ila.train.parallel import is_main_process

    # Under torchrun / accelerate every rank runs this; only rank 0 prints results.
    quiet_rank = (
        contextlib.nullcontext() if is_main_process() else contextlib.redirect_stdout(io.StringIO())
    )
    try:
        with quiet_rank:
            return _COMMANDS[args.command](args)
    except IlaError as exc:
        print(f"ila: error: {exc.render('flag')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ila: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except Exception as exc:
        from ila.files import storage_failure

        reason = storage_failure(exc)
        if reason is None:
            raise
        print(
            f"ila: error: {reason}; free disk space or raise the file-size limit"
            f"{_resume_hint(args)}",
            file=sys.stderr,
        )
        return 2


def _resume_hint(args: argparse.Namespace) -> str:
    """For a stopped score / run / finetune that left a run directory: how to go on."""
    if (
        args.command in ("score", "run", "finetune")
        and (args.output_dir / "run_state.json").is_file()
    ):
        return (
            f"; the run in {args.output_dir} is kept: run the same command with --resume "
            "to continue it"
        )
    return ""
