"""Quality at equal steps: all units vs ILA's freeze/tune rules vs other selections.

The paper's quality claims (arXiv 2410.17875, Tables 2-5): freezing the least important
~25% of the layers keeps or improves quality, and tuning only the top 10-30% comes close
to tuning everything. On SmolLM2-135M and the embedded ila-instruct data this script
LoRA-fine-tunes, for the same number of steps and several fine-tuning seeds:

* every unit;
* ILA, freeze the bottom 25% (tune the other 75%);
* ILA, tune the top 10% and the top 30%;
* controls with the same number of *trainable parameters* as ILA's top 30%
  (ila.core.controls): a random order, and the lora-norm ranking of the same stage-1
  adapter, each walked until the budget is met; and a random draw with the same number
  of units of each module type as ILA's top 30%;
* the top 30% of other scorers (``--methods``);

then evaluates each with `ila eval` on the held-out split (the same examples for every
selection: the split has its own seed): response loss, exact match of greedy answers,
and forgetting: the response loss on held-out chitchat conversations (a dataset not
tuned on). The base model is evaluated too. Mean and min-max over fine-tuning seeds.
By default every fine-tune runs one epoch of the training split. Usage::

    python benchmarks/bench_quality.py --ila-scores runs/x [--steps N] [--seeds 0 1 2]

Finished fine-tunes and evaluations in --work-dir are reused; other scorers' rankings
are kept as ``score-<method>.json`` in the records folder (scored with seed 0 into
``<work-dir>/score-<method>`` when missing). To share
the work between processes, give each its own ``--seeds`` or ``--only`` selections (no
report), then run once more without ``--only`` to write the table from the finished runs.
Each finished (selection, seed) also leaves its metrics in
``benchmarks/records/bench_quality/`` (no weights; ``--records`` for another folder), where a
later run finds them before the work dir; ``--report-only`` writes the table from those
records alone. A records folder holds the records of one ILA ranking: another ranking
(e.g. scored under other stage-2 settings) is refused there and needs its own folder, and
``--compare-records FOLDER`` adds that ranking's ILA rows to the report beside this one's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ila_process import ila
from results_file import write_section

RECORDS = Path(__file__).resolve().parent / "records" / "bench_quality"
SCORES_FILE = "ila-scores.json"  # the ILA ranking every record of a records dir was made with
# The selections that follow the ILA ranking, with their `ila finetune` rule flags (also
# compared across rankings by --compare-records).
ILA_ROWS = {
    "ILA: freeze bottom 25%": ["--freeze-bottom-fraction", "0.25"],
    "ILA: tune top 10%": ["--tune-top-fraction", "0.1"],
    "ILA: tune top 30%": ["--tune-top-fraction", "0.3"],
}

LIMIT = 600
EPOCH_STEPS = -(-(LIMIT - round(0.1 * LIMIT)) // 4)  # one epoch of the training split, batch 4
DATA = ["--limit", str(LIMIT), "--max-length", "128", "--eval-fraction", "0.1", "--device", "cpu"]
EVAL = ["--eval-generate-examples", "60", "--eval-max-new-tokens", "48"]
# Forgetting: loss on held-out conversations of a dataset that is not tuned on.
FORGET = ["--data", "chitchat", "--limit", "400", "--max-length", "128", "--device", "cpu",
          "--eval-generate-examples", "0"]  # fmt: skip


def finetune(rule: list[str], seed: int, steps: int, out: Path) -> dict:
    if not (out / "finetune_summary.json").is_file():
        ila(
            "finetune", *rule, "--method", "lora", "--max-steps", str(steps),
            "--seed", str(seed), "--output-dir", str(out), "--overwrite", *DATA,
        )  # fmt: skip
    return json.loads((out / "finetune_summary.json").read_text())


def evaluate(adapter: Path | None, seed: int, out: Path, flags: list[str]) -> dict:
    if not (out / "eval_results.json").is_file():
        extra = ["--adapter", str(adapter)] if adapter else []
        ila("eval", *extra, "--seed", str(seed), "--output-dir", str(out), "--overwrite",
            *flags)  # fmt: skip
    return json.loads((out / "eval_results.json").read_text())["metrics"]


def controls(ila_scores: Path, work_dir: Path, seed: int) -> dict[str, list[str]]:
    """Unit lists of the control selections, matched to ILA's top 30% (ila.core.controls)."""
    from ila.core.controls import (
        parameter_matched,
        random_order,
        random_within_type,
        trainable_parameters,
    )
    from ila.core.layers import LayerMap
    from ila.core.scores import LayerScores

    scores = LayerScores.load(ila_scores)
    layer_map = LayerMap.from_dict(scores.layout)
    top = scores.top(0.3)
    budget = trainable_parameters([layer_map.unit(n) for n in top], method="lora")
    norm = work_dir / "score-lora-norm"
    if not (norm / "layer_scores.json").is_file():
        # lora-norm of ILA's own stage-1 adapter: the same Delta, ranked by ||Delta_i||.
        norms = scores.meta["stage1_update_norms"]
        order = sorted(range(len(norms)), key=lambda i: (-norms[i], i))
        norm_ranking = [scores.names[i] for i in order]
    else:
        norm_ranking = LayerScores.load(norm).ranking()
    return {
        "random, ILA top-30% parameters": parameter_matched(
            random_order(layer_map, seed), layer_map, budget
        ),
        "lora-norm (same adapter), ILA top-30% parameters": parameter_matched(
            norm_ranking, layer_map, budget
        ),
        "random within module type (ILA top 30%)": random_within_type(top, layer_map, seed),
    }


def record_path(slug: str, seed: int, records: Path = RECORDS) -> Path:
    return records / f"{slug}-seed{seed}.json"


def read_record(slug: str, seed: int, records: Path) -> dict:
    """The kept metrics of one (selection, seed); exits with what to run when missing."""
    path = record_path(slug, seed, records)
    if not path.is_file():
        raise SystemExit(f"--report-only: no record {path}; run without --report-only first")
    return json.loads(path.read_text())


def finetune_precision(adapter: Path | None) -> str | None:
    """The precision the fine-tune resolved (``--precision auto`` picks bf16 autocast on a
    CPU with AVX512-BF16 or AMX, float32 elsewhere); None for the base model."""
    if adapter is None:
        return None
    return json.loads((adapter / "environment.json").read_text())["precision"]["precision"]


def precision_text(precisions: set[str | None]) -> str:
    """The fine-tunes' precisions as the report states them (None: not recorded)."""
    names = {"bf16": "bf16 autocast", "fp16": "fp16 autocast", "fp32": "float32"}
    known = sorted(names.get(p, p) for p in precisions if p is not None)
    text = " and ".join(known) if known else "a precision not recorded"
    if known and None in precisions:
        text += " (some records do not say)"
    return text + " (`--precision auto`)"


def measure(
    rule: list[str] | None,
    seed: int,
    steps: int,
    work_dir: Path,
    slug: str,
    records: Path = RECORDS,
) -> dict:
    """Fine-tune (unless ``rule`` is None: the base model) and evaluate one selection at one
    seed; the metrics are kept as a record under ``records`` and read from it when it exists."""
    path = record_path(slug, seed, records)
    if path.is_file():
        return json.loads(path.read_text())
    adapter, summary = None, {"num_selected": 0, "trainable_parameters": 0}
    if rule is not None:
        adapter = work_dir / f"ft-{slug}-{seed}"
        summary = finetune(rule, seed, steps, adapter)
    held = evaluate(adapter, seed, work_dir / f"eval-{slug}-{seed}", [*DATA, *EVAL])
    other = evaluate(adapter, seed, work_dir / f"forget-{slug}-{seed}", FORGET)
    record = {
        "seed": seed,
        "steps": steps,
        "rule": rule,
        "units": summary["num_selected"],
        "trainable_parameters": summary["trainable_parameters"],
        "loss": held["loss"],
        "em": held["exact_match"],
        "forget": other["loss"],
        "examples": [held["num_examples"], held["exact_match_examples"], other["num_examples"]],
        "precision": finetune_precision(adapter),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def spread(values: list[float], digits: int = 3) -> tuple[str, str]:
    mean = f"{statistics.fmean(values):.{digits}f}"
    return mean, f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--ila-scores",
        type=Path,
        help="an ILA score run (kept as a record; --report-only reads the record)",
    )
    parser.add_argument(
        "--steps", type=int, help="fine-tuning steps (default: one epoch of the training split)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--methods",
        nargs="*",
        default=["grad-norm"],
        help="other scorers whose top 30%% is tuned too (none: --methods with no name)",
    )
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-quality"))
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="SLUG",
        help="fine-tune and evaluate only these selections (slugs as in the run directory "
        "names, e.g. ilatunetop30) and write no report: to share the work between processes",
    )
    parser.add_argument(
        "--records",
        type=Path,
        default=RECORDS,
        help="where the metrics and the ILA ranking are kept (one ILA ranking per folder)",
    )
    parser.add_argument(
        "--compare-records",
        type=Path,
        help="records of another ILA ranking (another --records folder): its ILA rows are "
        "added to the report beside this ranking's, with a verdict each",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the table from the --records folder alone (no fine-tune)",
    )
    args = parser.parse_args()
    kept = args.records / SCORES_FILE
    if args.report_only:
        if not kept.is_file():
            parser.error(f"--report-only: no {kept}; run with --ila-scores first")
        args.ila_scores = kept
    elif args.ila_scores is None:
        parser.error("--ila-scores is required (an ILA score run) unless --report-only")
    else:
        from ila.core.scores import LayerScores

        ranking = LayerScores.load(args.ila_scores)
        if kept.is_file() and LayerScores.load(kept).to_dict() != ranking.to_dict():
            parser.error(
                f"{args.records} holds records of another ILA ranking; give this one its own "
                "--records folder"
            )
        args.records.mkdir(parents=True, exist_ok=True)
        ranking.save(kept)

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.steps is None:
        args.steps = EPOCH_STEPS
    ila_rule = ["--scores", str(args.ila_scores)]
    configs: dict[str, list[str] | None] = {
        "base model (no tuning)": None,
        "all units": ["--all-units"],
        **{name: [*ila_rule, *flags] for name, flags in ILA_ROWS.items()},
    }
    for name, units in controls(args.ila_scores, args.work_dir, seed=0).items():
        configs[name] = ["--units", *units]
    known = [slug_of(name) for name in configs]
    known += [slug_of(f"{method}: tune top 30%") for method in args.methods]
    if args.only and not set(args.only) <= set(known):
        unknown = sorted(set(args.only) - set(known))
        parser.error(f"--only: unknown selection {unknown}; choose from {known}")
    for method in args.methods:
        kept_ranking = args.records / f"score-{method}.json"
        if not args.report_only and not kept_ranking.is_file():
            from ila.core.scores import LayerScores

            scores = args.work_dir / f"score-{method}"
            if not (scores / "layer_scores.json").is_file():
                # Ranked on the training split only, as the ILA ranking is: no held-out example.
                ila("score", "--scorer", method, "--output-dir", str(scores), "--overwrite",
                    "--seed", "0", *DATA)  # fmt: skip
            LayerScores.load(scores).save(kept_ranking)
        configs[f"{method}: tune top 30%"] = [
            "--scores", str(kept_ranking), "--tune-top-fraction", "0.3",
        ]  # fmt: skip

    table: dict[str, dict[str, list[float]]] = {}
    rows: list[str] = []
    counts: tuple[int, ...] = ()
    precisions: set[str | None] = set()
    for name, rule in configs.items():
        slug = slug_of(name)
        if args.only and slug not in args.only:
            continue
        records = [
            read_record(slug, seed, args.records)
            if args.report_only
            else measure(rule, seed, args.steps, args.work_dir, slug, args.records)
            for seed in args.seeds
        ]
        counts = tuple(records[-1]["examples"])
        precisions |= {r.get("precision") for r in records if r["rule"] is not None}
        table[name], row = table_row(name, records)
        rows.append(row)
        print(row, flush=True)
    if args.only:
        return
    held, generated, forget = counts
    from ila.core.scores import LayerScores

    kept_meta = LayerScores.load(args.records / SCORES_FILE).meta
    weight, stage1_steps = kept_meta["stage2"]["budget_weight"], kept_meta["stage1_steps"]
    compare_flag = ""
    compared: list[tuple[str, str]] = []
    if args.compare_records:
        other_meta = LayerScores.load(args.compare_records / SCORES_FILE).meta
        label = ranking_difference(kept_meta, other_meta, args.compare_records)
        compare_flag = f" --compare-records {rel(args.compare_records)}"
        for name in ILA_ROWS:
            slug = slug_of(name)
            if all(record_path(slug, s, args.compare_records).is_file() for s in args.seeds):
                other = f"{name} ({label})"
                records = [read_record(slug, s, args.compare_records) for s in args.seeds]
                table[other], row = table_row(other, records)
                rows.append(row)
                compared.append((other, name))
    lines = [
        "## Quality at equal steps (`benchmarks/bench_quality.py`)",
        "",
        f"Written {started} from the records in `{rel(args.records)}` (one per selection and "
        "seed; `--report-only` rebuilds this section from them). SmolLM2-135M, fine-tuned "
        f"in {precision_text(precisions)}, "
        "`ila-instruct` (first 600 examples, 10% held out "
        "by the split seed 0: the same examples for every selection and seed; max length 128, "
        f"batch 4). LoRA r=8 for {args.steps} steps (one epoch unless `--steps` says "
        f"otherwise; lr 1e-3) on each selection, fine-tuning seeds {args.seeds}; ILA scores "
        f"kept in `{rel(args.records / SCORES_FILE)}`, other scorers ranked once with seed 0 on "
        "the same training split; control selections "
        "drawn once (seed 0). Evaluated with `ila eval`: response loss on the "
        f"{held} held-out examples, exact match of greedy answers (48 new tokens at most) on "
        f"{generated} of them, and forgetting: the response loss on {forget} held-out chitchat "
        "conversations, a dataset not tuned on. "
        f"Command: `python benchmarks/bench_quality.py --ila-scores RUN --records "
        f"{rel(args.records)} --steps {args.steps} --seeds {' '.join(map(str, args.seeds))} "
        f"{' '.join(['--methods', *args.methods])}{compare_flag}`, where RUN is `ila score "
        f"--seed 0 {' '.join(DATA)} --stage2-budget-weight {weight:g}` (stage 1 stopped at "
        f"step {stage1_steps}).",
        "",
        "| selection | units tuned | trainable params | held-out loss (mean) | min-max "
        "| exact match (mean) | min-max | chitchat loss (mean) | min-max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        *reading(table, len(args.seeds)),
        *[verdict(table, other, name) for other, name in compared],
    ]
    if compared:
        lines += [
            "",
            f"Rows marked ({label}) tune the same selections of a second ILA ranking, kept in "
            f"`{rel(args.compare_records / SCORES_FILE)}` (`ila score` on the same split with "
            f"those stage-2 settings; stage 1 stopped at step {other_meta['stage1_steps']}), "
            "fine-tuned and evaluated the same way; the last lines compare each with this "
            "ranking's.",
        ]
    markdown = "\n".join(lines)
    write_section("bench_quality", markdown)
    print(markdown)


def ranking_difference(ours: dict, theirs: dict, other: Path) -> str:
    """What sets the ranking with meta ``theirs`` (kept in ``other``) apart from the one
    with meta ``ours``: the stage-2 settings that differ (e.g. "stage-2 budget_weight 5"),
    else its folder."""
    changed = [f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
               for key, value in theirs["stage2"].items()
               if ours["stage2"].get(key) != value]  # fmt: skip
    return f"stage-2 {', '.join(changed)}" if changed else f"ranking of {rel(other)}"


def table_row(name: str, records: list[dict]) -> tuple[dict[str, list[float]], str]:
    """One selection's per-seed measures and its markdown row (mean and min-max of each)."""
    row = {key: [r[key] for r in records] for key in MEASURES}
    cells = [cell for key in MEASURES for cell in spread(row[key])]
    first = records[0]
    text = f"| {name} | {first['units']} | {first['trainable_parameters']:,} | "
    return row, text + " | ".join(cells) + " |"


def rel(path: Path) -> Path:
    """``path`` relative to the repository when it lies inside it (as the docs name it)."""
    root = Path(__file__).resolve().parent.parent
    try:
        return path.resolve().relative_to(root)
    except ValueError:
        return path


def slug_of(name: str) -> str:
    """A selection's name as used in its run directories (``ft-<slug>-<seed>``)."""
    kept = "".join(c for c in name.lower() if c.isalnum() or c == " ")
    return kept.replace(" ", "")[:60]


# Which way is better for each measure: lower loss (held-out, chitchat), higher exact match.
LOWER_IS_BETTER = {"loss": True, "em": False, "forget": True}
MEASURES = {"loss": "held-out loss", "em": "exact match", "forget": "chitchat loss (forgetting)"}


def versus(a: list[float], b: list[float], measure: str) -> str:
    """Compare two selections' per-seed values on one measure by their whole min-max ranges.

    "better"/"worse" only when the ranges do not overlap; anything else is "within the seed
    spread", which is no evidence either way.
    """
    sign = 1 if LOWER_IS_BETTER[measure] else -1  # compare as "lower is better"
    a, b = [sign * v for v in a], [sign * v for v in b]
    if max(a) < min(b):
        return "better beyond the seed spread"
    if min(a) > max(b):
        return "worse beyond the seed spread"
    return "within the seed spread"


def verdict(table: dict[str, dict[str, list[float]]], a: str, b: str) -> str:
    """One sentence: selection ``a`` against ``b`` on every measure, means and verdicts."""
    parts = []
    for measure, label in MEASURES.items():
        values_a, values_b = table[a][measure], table[b][measure]
        parts.append(
            f"{label} {statistics.fmean(values_a):.3f} vs {statistics.fmean(values_b):.3f} "
            f"({versus(values_a, values_b, measure)})"
        )
    return f"- {a} against {b}: " + "; ".join(parts) + "."


def reading(table: dict[str, dict[str, list[float]]], seeds: int) -> list[str]:
    """What the table says about the paper's quality claims, stated from the numbers.

    The paper (arXiv 2410.17875; docs/method.md, "The paper's claims, as measured here")
    reports that freezing the least important ~25% is at least as good as tuning every
    unit, and that tuning the top 10-30% comes close to it. A difference counts only when
    the min-max ranges over the fine-tuning seeds do not overlap.
    """
    controls = [k for k in table if "parameters" in k or "module type" in k]
    others = [k for k in table if k.endswith("tune top 30%") and not k.startswith("ILA")]
    out = [
        f"Reading ({seeds} fine-tuning seed{'s' if seeds != 1 else ''}; a difference counts "
        "only where the min-max ranges over seeds do not overlap):",
        "",
        verdict(table, "ILA: freeze bottom 25%", "all units"),
        verdict(table, "ILA: tune top 30%", "all units"),
        verdict(table, "ILA: tune top 10%", "all units"),
        *[verdict(table, "ILA: tune top 30%", name) for name in controls + others],
    ]
    if seeds < 2:
        out += ["", "With one seed there is no spread: these verdicts are not evidence."]
    return out


if __name__ == "__main__":
    main()
