"""ILA under preference optimisation: the DPO ranking against the SFT ranking, and DPO on
the units it ranks against DPO on every unit at equal steps.

docs/method.md, "Preference optimisation". On the embedded model, this script runs (or
reuses) `ila score --objective dpo --data ila-preference` (the ila-instruct prompts with a
correct and a plausibly wrong reply) with the settings of the finished SFT runs given on
ila-instruct (same prompts and chosen replies), and reports:

* the top-25% Jaccard, Spearman and structural null (`ila compare`) of the DPO ranking
  against each SFT ranking, beside the SFT runs' own seed-to-seed agreement and chance;
* `ila finetune --objective dpo` LoRA on every unit, on the DPO ranking's top 30% and with
  its bottom 25% frozen, the same steps each, by the held-out preference accuracy and
  margin (ila.evaluation.preference) and the base model's, for reference.

Usage::

    python benchmarks/bench_dpo.py --sft-runs runs/bench-overlap/ila-instruct/seed0 ... \\
        [--seeds 0] [--steps 60] [--ft-seeds 0 1 2] [--stage1-max-steps 150] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ila_process import ila
from results_file import write_section
from run_settings import pair_rows, ranking_pairs, run_flags

RULES = {
    "all units": ["--all-units"],
    "DPO top 30%": ["--tune-top-fraction", "0.3"],
    "DPO bottom 25% frozen": ["--freeze-bottom-fraction", "0.25"],
}


def main() -> None:
    from ila.core.scores import LayerScores, expected_random_jaccard, top_count

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sft-runs", type=Path, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=60, help="steps of each DPO fine-tune")
    parser.add_argument(
        "--ft-seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds of each selection"
    )
    parser.add_argument("--stage1-max-steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-dpo"))
    parser.add_argument(
        "--report-only", action="store_true", help="report the finished runs, start none"
    )
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    config = yaml.safe_load((args.sft_runs[0] / "config.yaml").read_text())
    common = [*run_flags(config, args.threads, data="ila-preference"), "--objective", "dpo"]
    dpo_runs = []
    for seed in args.seeds:
        out = args.work_dir / f"score-seed{seed}"
        if not (out / "layer_scores.json").is_file():
            if args.report_only:
                raise SystemExit(f"{out}: the DPO score run has not finished")
            ila("score", *common, "--seed", str(seed), "--stage1-max-steps",
                str(args.stage1_max_steps), "--output-dir", str(out), "--overwrite")  # fmt: skip
        dpo_runs.append(out)
    sft = [LayerScores.load(r) for r in args.sft_runs]
    dpo = [LayerScores.load(r) for r in dpo_runs]

    n = len(sft[0].units)
    k = top_count(n, 0.25)
    rows = {
        "DPO vs SFT": ranking_pairs(dpo, sft, same=False),
        "SFT vs SFT (seeds)": ranking_pairs(sft, sft, same=True),
        "DPO vs DPO (seeds)": ranking_pairs(dpo, dpo, same=True),
    }
    tuned: dict[str, list[dict]] = {}
    for name, rule in RULES.items():
        slug = "ft-" + "".join(c if c.isalnum() else "-" for c in name)
        scores = [] if rule == ["--all-units"] else ["--scores", str(dpo_runs[0])]
        for ft_seed in args.ft_seeds:
            out = args.work_dir / (slug if ft_seed == 0 else f"{slug}-seed{ft_seed}")
            if not (out / "finetune_summary.json").is_file():
                if args.report_only:
                    continue
                ila("finetune", *common, *rule, *scores, "--max-steps", str(args.steps),
                    "--seed", str(ft_seed), "--output-dir", str(out), "--overwrite")  # fmt: skip
            summary = json.loads((out / "finetune_summary.json").read_text())
            tuned.setdefault(name, []).append({**summary, "ft_seed": ft_seed})
    base_dir = args.work_dir / "eval-base"
    if not (base_dir / "eval_results.json").is_file() and not args.report_only:
        ila("eval", *common, "--eval-generate-examples", "0", "--output-dir", str(base_dir),
            "--overwrite")  # fmt: skip
    base_file = base_dir / "eval_results.json"
    base = json.loads(base_file.read_text())["metrics"] if base_file.is_file() else None
    metas = [json.loads((r / "layer_scores.json").read_text())["meta"] for r in dpo_runs]

    lines = [
        "## ILA under DPO (`benchmarks/bench_dpo.py`)",
        "",
        f"Measured {started}. `ila score --objective dpo --data ila-preference` at seeds "
        f"{', '.join(map(str, args.seeds))} (stage 1 capped at {args.stage1_max_steps} steps; "
        "T: "
        + ", ".join(f"{m['T']} ({'stable' if m['stage1_stable'] else 'cap'})" for m in metas)
        + "), against the SFT runs "
        + ", ".join(f"`{r}`" for r in args.sft_runs)
        + " on ila-instruct (the same prompts, their chosen replies as the responses). Top-25% "
        f"Jaccard (k = {k} of {n}; chance {expected_random_jaccard(n, k):.2f}), Spearman and "
        "the structural null of `ila compare`, mean (min-max) over pairs. Command: `python "
        f"benchmarks/bench_dpo.py --threads {args.threads} --steps {args.steps} "
        f"--stage1-max-steps {args.stage1_max_steps} --seeds {' '.join(map(str, args.seeds))} "
        "--sft-runs "
        + " ".join(str(r) for r in args.sft_runs)
        + f" --ft-seeds {' '.join(map(str, args.ft_seeds))}`.",
        "",
        *pair_rows(rows),
    ]
    pairs = next(iter(tuned.values()))[0]["preference_pairs"] if tuned else 0
    lines += [
        "",
        f"DPO fine-tunes (LoRA, {args.steps} steps each; selections from the seed-"
        f"{args.seeds[0]} DPO ranking), on {pairs} held-out pairs: the share where the model "
        "gives the chosen reply the higher log-probability (one pair is "
        f"{1 / max(pairs, 1):.3f}), and the mean log-probability margin; mean (min-max) over "
        "the fine-tuning seeds listed.",
        "",
        "| model | fine-tuning seeds | trainable params | prefers chosen | margin | s/step |",
        "|---|---|---:|---:|---:|---:|",
    ]
    if base is not None:
        lines.append(
            f"| base model | - | - | {base['preference_accuracy']:.3f} | "
            f"{base['preference_margin']:.3f} | - |"
        )
    for name, runs in tuned.items():
        seeds = ", ".join(str(r["ft_seed"]) for r in runs)
        lines.append(
            f"| DPO, {name.removeprefix('DPO ')} | {seeds} | {runs[0]['trainable_parameters']:,} | "
            f"{_spread([r['preference_accuracy'] for r in runs])} | "
            f"{_spread([r['preference_margin'] for r in runs])} | "
            f"{_spread([r['seconds_per_step'] for r in runs], 2)} |"
        )
    missing = [name for name in RULES if name not in tuned]
    if missing or base is None:
        lines += [
            "",
            "Not run in this measurement (the script starts them when run without "
            f"--report-only): {', '.join(missing + ([] if base else ['the base model']))}.",
        ]
    markdown = "\n".join(lines)
    write_section("bench_dpo", markdown)
    print(markdown)


def _spread(values: list[float], digits: int = 3) -> str:
    """The mean, and the min-max when there is more than one value."""
    mean = f"{sum(values) / len(values):.{digits}f}"
    if len(values) == 1:
        return mean
    return f"{mean} ({min(values):.{digits}f}-{max(values):.{digits}f})"


if __name__ == "__main__":
    main()
