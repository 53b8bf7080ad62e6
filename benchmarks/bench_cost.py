"""What ILA costs against the fine-tune it informs, and what selective tuning saves.

ILA (arXiv 2410.17875) spends stage 1 (LoRA on every unit until epsilon-stable, T steps)
and stage 2 (the gates, a fixed number of steps) before the fine-tune it informs. This
script measures, in one run on SmolLM2-135M and the embedded data, each in its own
process, the median step time and peak memory of:

* ILA stage 1 and stage 2 (`ila score` capped at a few steps of each);
* LoRA fine-tuning of every unit, of ILA's top 30%, and of all but ILA's bottom 25%;
* full fine-tuning of every unit and of ILA's top 30%;

then puts ILA's whole cost (T and the stage-2 steps read from the finished ILA runs
given, at the step times measured here) against fine-tunes of one and three epochs, and
works out after how many fine-tuning steps the time saved by tuning the top 30% pays
for ILA. Usage::

    python benchmarks/bench_cost.py --ila-runs runs/bench-overlap/ila-instruct/seed0 ... \\
        [--steps 20]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ila_process import ila
from results_file import write_section

COMMON = ["--max-length", "256", "--batch-size", "4", "--device", "cpu", "--seed", "0"]


def step_times(metrics: Path, stage: str) -> float:
    """Median seconds per step of ``stage`` (first step dropped: warm-up)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in rows if r["stage"] == stage]
    gaps = [b - a for a, b in itertools.pairwise(elapsed)][1:]
    if not gaps:
        raise SystemExit(f"{metrics}: too few {stage} steps to time")
    return statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ila-runs", type=Path, nargs="+", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-cost"))
    parser.add_argument("--note", default="", help="conditions worth stating with the numbers")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    work = args.work_dir
    steps = str(args.steps)

    metas = [json.loads((r / "layer_scores.json").read_text())["meta"] for r in args.ila_runs]
    t_steps = statistics.fmean(m["stage1_steps"] for m in metas)
    stage2_steps = statistics.fmean(m["stage2_steps"] for m in metas)
    data = json.loads((args.ila_runs[0] / "data.json").read_text())
    epoch = data["num_train_features"] / 4

    score_dir = work / "score"
    ila(
        "score", "--output-dir", str(score_dir), "--overwrite", *COMMON,
        "--stage1-max-steps", steps, "--stage1-min-steps", steps, "--stage2-steps", steps,
    )  # fmt: skip
    timing = {
        "ILA stage 1 (LoRA, all units)": step_times(score_dir / "metrics.jsonl", "stage1"),
        "ILA stage 2 (gates)": step_times(score_dir / "metrics.jsonl", "stage2"),
    }
    memory: dict[str, float | None] = {k: None for k in timing}
    ila_scores = str(args.ila_runs[0])
    runs = {
        "LoRA, all units": ["--all-units", "--method", "lora"],
        "LoRA, ILA top 30%": ["--scores", ila_scores, "--tune-top-fraction", "0.3"],
        "LoRA, ILA bottom 25% frozen": ["--scores", ila_scores, "--freeze-bottom-fraction", "0.25"],
        "full, all units": ["--all-units", "--method", "full"],
        "full, ILA top 30%": [
            "--scores", ila_scores, "--tune-top-fraction", "0.3", "--method", "full",
        ],
    }  # fmt: skip
    params: dict[str, int] = {}
    for name, rule in runs.items():
        out = work / ("ft-" + name.replace(",", "").replace(" ", "-").replace("%", ""))
        ila("finetune", *rule, "--max-steps", steps, "--output-dir", str(out), "--overwrite",
            *COMMON)  # fmt: skip
        summary = json.loads((out / "finetune_summary.json").read_text())
        timing[name] = step_times(out / "metrics.jsonl", "finetune")
        memory[name] = summary["peak_rss_mb"]
        params[name] = summary["trainable_parameters"]

    ila_cost = (
        t_steps * timing["ILA stage 1 (LoRA, all units)"]
        + stage2_steps * timing["ILA stage 2 (gates)"]
    )
    lines = [
        "## Cost: ILA against the fine-tune it informs (`benchmarks/bench_cost.py`)",
        "",
        f"Measured {started} on {os.cpu_count()} CPU cores, float32, SmolLM2-135M, "
        "ila-instruct (max length 256, batch 4), each configuration in its own process, "
        f"{args.steps} steps each, median step time after the first. Command: `python "
        "benchmarks/bench_cost.py --ila-runs "
        + " ".join(str(r) for r in args.ila_runs)
        + "`."
        + (f" {args.note}" if args.note else ""),
        "",
        "| what | s/step | vs LoRA all units | peak RSS (MB) | trainable params |",
        "|---|---:|---:|---:|---:|",
    ]
    base = timing["LoRA, all units"]
    for name, seconds in timing.items():
        mem = memory.get(name)
        lines.append(
            f"| {name} | {seconds:.2f} | {seconds / base:.2f} | "
            f"{'-' if mem is None else f'{mem:.0f}'} | "
            f"{params[name]:,} |"
            if name in params
            else f"| {name} | {seconds:.2f} | {seconds / base:.2f} | - | - |"
        )
    saved = base - timing["LoRA, ILA top 30%"]
    lines += [
        "",
        f"ILA's own cost: stage 1 ran T = {t_steps:.0f} steps on average and stage 2 "
        f"{stage2_steps:.0f} steps in the ILA runs given ({len(metas)}), so about "
        f"{ila_cost:.0f} s at these step times, or {ila_cost / base:.0f} steps of LoRA on all "
        f"units. One epoch of this data is {epoch:.0f} steps at batch 4.",
        "",
        "| fine-tune informed | LoRA all units (s) | LoRA top 30% (s) | ILA + LoRA top 30% (s) "
        "| ILA as % of the all-units fine-tune |",
        "|---|---:|---:|---:|---:|",
    ]
    for epochs in (1, 3):
        n = epochs * epoch
        full = n * base
        top = n * timing["LoRA, ILA top 30%"]
        lines.append(
            f"| {epochs} epoch{'s' if epochs > 1 else ''} ({n:.0f} steps) | {full:.0f} | "
            f"{top:.0f} | {ila_cost + top:.0f} | {100 * ila_cost / full:.0f}% |"
        )
    if saved > 0:
        lines += [
            "",
            f"Tuning the top 30% saves {saved:.2f} s per step here, so ILA pays for itself in "
            f"time after about {ila_cost / saved:.0f} fine-tuning steps "
            f"({ila_cost / saved / epoch:.1f} epochs); shorter fine-tunes cost more with ILA "
            "than without it. Memory is where selective tuning helps without a break-even.",
        ]
    else:
        lines += ["", "Tuning the top 30% was not faster per step here: ILA never pays back."]
    markdown = "\n".join(lines)
    write_section("bench_cost", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
